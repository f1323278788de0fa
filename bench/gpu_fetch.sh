#!/usr/bin/env bash
# Here (a machine with PyPI): everything bench/gpu_check.sh needs on the GPU machine, which
# cannot download (../shared/GPU.md). Writes, under the git-ignored .whl/:
#   .whl/ortgpu/ortgpu.part.*   onnxruntime-gpu 1.31.1 (CUDA 13, cp312), split into 40 MiB parts (a carry holds 64 MiB in all, the tree included)
#   .whl/gpu-deps/*.whl         cp312 wheels of attnserve's dependencies that machine lacks
#   .whl/gpu-repo/              the three default models, exported here
# Then, one device call per part (each carries one part, under the 64 MiB carry limit):
#   run(carry=[".whl/ortgpu/ortgpu.part.aa"], command="mkdir -p /tmp/ortgpu && cp .whl/ortgpu/ortgpu.part.aa /tmp/ortgpu/")
#   ... the same for every part, then:
#   run(carry=[".whl/gpu-deps", ".whl/gpu-repo"], command="bash bench/gpu_check.sh")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl/ortgpu .whl/gpu-deps
if ! ls .whl/ortgpu/ortgpu.part.* >/dev/null 2>&1; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 -d .whl/ortgpu onnxruntime-gpu==1.31.1
  (cd .whl/ortgpu && split -b 40m onnxruntime_gpu-*.whl ortgpu.part. && rm onnxruntime_gpu-*.whl)
fi
# The server imports aiohttp (HTTP transport), orjson, uvloop, grpc health and reflection.
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d .whl/gpu-deps aiohttp orjson uvloop tqdm "grpcio-health-checking>=1.75,<1.82" "grpcio-reflection>=1.75,<1.82"
# grpcio and protobuf are the GPU machine's own: drop the copies pip fetched as dependencies.
rm -f .whl/gpu-deps/grpcio-[0-9]*.whl .whl/gpu-deps/protobuf-*.whl
[ -f .whl/gpu-repo/.exported ] || { .venv/bin/attnserve export --model-repository .whl/gpu-repo && touch .whl/gpu-repo/.exported; }
ls -la .whl/ortgpu; du -sh .whl/gpu-deps .whl/gpu-repo
