#!/usr/bin/env bash
# On the GPU machine: the whole CUDA check of ../shared/GPU.md in one go, within 8 minutes.
# Needs what bench/gpu_fetch.sh prepared: the onnxruntime-gpu parts already copied to
# /tmp/ortgpu (the machine keeps /tmp while warm), .whl/gpu-deps and .whl/gpu-repo carried.
# Writes $OUT/gpu_check.{json,md} (bench/results/ when OUT is unset).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
SITE=/tmp/site
has_cuda() { PYTHONPATH=$SITE python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; }
if ! has_cuda; then
  ls /tmp/ortgpu/ortgpu.part.* >/dev/null 2>&1 || { echo "no onnxruntime-gpu parts in /tmp/ortgpu: see bench/gpu_fetch.sh" >&2; exit 2; }
  cat /tmp/ortgpu/ortgpu.part.* > /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
  python3 -m pip install -q --no-deps --target "$SITE" /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
fi
if [ -d .whl/gpu-deps ]; then python3 -m pip install -q --no-deps --target "$SITE" .whl/gpu-deps/*.whl; fi
export PYTHONPATH="$SITE:$PWD"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
mkdir -p "$OUT"
timeout 460 python3 -m bench.gpu_check --repository "${REPOSITORY:-.whl/gpu-repo}" --provider cuda --out "$OUT/gpu_check"
