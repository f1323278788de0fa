"""bench/gpu_check.py on the CPU provider: the GPU machine's script keeps working where no GPU is.

The same steps run as on CUDA (placement from ONNX Runtime's profile, fp32 parity with the
reference, the fp16 variant, in-process run and IOBinding timings, served with and without
dynamic batching); on CPU every node must be on the CPU provider and fp32 must equal the
reference. Nothing is asserted about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_cpu_run_writes_every_check(model_repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu_check"
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--repository", str(model_repository), "--provider", "cpu",
         "--models", "se_cnn_classifier", "--quick", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())
    [model] = results["models"]
    assert model["placement"]["all_on_provider"]
    assert set(model["placement"]["kernels_by_provider"]) == {"CPUExecutionProvider"}
    assert model["fp32_ok"] and model["fp32_max_abs_diff"] == 0.0
    assert model["fp16_ok"], model.get("fp16_error") or model["fp16_max_abs_diff"]
    assert set(model["in_process"]) == {"1", "8", "32"}
    for label in ("dynamic batching", "off"):
        levels = results["served"][label]["se_cnn_classifier"]
        assert levels["1"]["req_s"] > 0 and levels["32"]["req_s"] > 0 and not levels["32"]["errors"]
    assert "| se_cnn_classifier | yes |" in out.with_suffix(".md").read_text()


def test_cuda_asked_without_cuda_says_what_to_install(model_repository: Path, tmp_path: Path) -> None:
    import onnxruntime as ort
    import pytest

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is here: the refusal is for machines without it")
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--repository", str(model_repository), "--provider", "cuda",
         "--out", str(tmp_path / "x")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "onnxruntime-gpu" in done.stderr
