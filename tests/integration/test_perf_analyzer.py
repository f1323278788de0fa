"""Triton's own load generator, perf_analyzer, runs clean against every model.

perf_analyzer is a C++ binary nobody here wrote: it reads the model's metadata and config,
builds its own requests (sync, async and streaming), and reads ModelStatistics back. Each run
is short and counted in requests (``--request-count``), so it does not wait for throughput to
settle. Binary: ``$PERF_ANALYZER``, else ``perf_analyzer`` next to this Python or on PATH. It
needs ``libb64.so.0d`` (Debian ``libb64-0d``) and ``libcudart.so.12`` (PyPI
``nvidia-cuda-runtime-cu12``, found in site-packages here) even on a machine without a GPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ServerProcess
from tests.integration.support import ENCODER, LANGID, SAGAN, SECNN, VISION, model_stats, sample_inputs, spec_of

RUN_TIMEOUT_S = 180


def _find_binary() -> str | None:
    given = os.environ.get("PERF_ANALYZER")
    if given:
        return given
    beside = Path(sys.executable).parent / "perf_analyzer"
    if beside.is_file():
        return str(beside)
    return shutil.which("perf_analyzer")


def _cudart_dirs() -> list[str]:
    dirs = []
    for entry in sys.path:
        lib = Path(entry) / "nvidia" / "cuda_runtime" / "lib"
        if (lib / "libcudart.so.12").is_file():
            dirs.append(str(lib))
    return dirs


@pytest.fixture(scope="session")
def perf_analyzer() -> tuple[str, dict[str, str]]:
    """(binary, environment) or a skip naming what is missing."""
    binary = _find_binary()
    if binary is None:
        pytest.skip(
            "perf_analyzer not found: set PERF_ANALYZER, or install it beside this Python "
            "(it ships in the manylinux tritonclient wheels up to 2.60; 2.51 runs on glibc 2.36)"
        )
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*_cudart_dirs(), env.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
    probe = subprocess.run([binary, "--version"], capture_output=True, text=True, env=env, timeout=60)
    if "error while loading shared libraries" in probe.stderr:
        pytest.skip(
            f"perf_analyzer cannot start: {probe.stderr.strip()} "
            "(apt-get install libb64-0d; pip install nvidia-cuda-runtime-cu12)"
        )
    return binary, env


def _input_file(path: Path, samples: list[dict[str, np.ndarray]]) -> Path:
    """perf_analyzer's --input-data JSON: one entry per request, tensors without the batch dim."""
    data = [
        {name: {"content": array[0].ravel().tolist(), "shape": list(array.shape[1:])} for name, array in s.items()}
        for s in samples
    ]
    path.write_text(json.dumps({"data": data}))
    return path


def _run(perf_analyzer, server: ServerProcess, model: str, *flags: str) -> str:
    binary, env = perf_analyzer
    argv = [binary, "-m", model, "-i", "grpc", "-u", server.url, *flags]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}\n{output[-6000:]}"
    return output


def _throughputs(output: str) -> dict[int, float]:
    """{concurrency: infer/sec} from the closing summary lines."""
    found = re.findall(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec", output)
    assert found, output[-4000:]
    return {int(c): float(t) for c, t in found}


@pytest.mark.parametrize(
    ("model", "mode"),
    [
        (SECNN, "sync"), (SAGAN, "async"), (ENCODER, "streaming"), *((m, "sync") for m in VISION),
        *zip(LANGID, ("sync", "async", "streaming", "async")),
    ],
)
def test_perf_analyzer_runs_clean(perf_analyzer, server, client, model_repository, tmp_path, model, mode) -> None:
    rng = np.random.default_rng(40)
    flags = ["--concurrency-range", "4", "--request-count", "200"]
    if mode != "sync":
        flags.append(f"--{mode}")
    if model in (SECNN, *VISION):
        flags += ["-b", "2"]  # two rows per request: random images are valid inputs
    else:
        # Random int64 data would be out-of-range labels and token ids: give valid ones.
        samples = [sample_inputs(model_repository, model, 1, rng, length=16) for _ in range(8)]
        flags += ["--input-data", str(_input_file(tmp_path / f"{model}.json", samples))]
        # Variable-length token inputs (the encoder, the attention family) get a fixed shape.
        for tensor in spec_of(model_repository, model).inputs:
            if -1 in tensor.dims:
                flags += ["--shape", f"{tensor.name}:16"]
    rows_per_request = 2 if model in (SECNN, *VISION) else 1

    before = model_stats(client, model)
    output = _run(perf_analyzer, server, model, *flags)
    after = model_stats(client, model)

    assert _throughputs(output)[4] > 0
    assert re.search(r"Request count: 200\b", output), output[-4000:]
    # perf_analyzer read the server's statistics back (the statistics extension works for it).
    assert re.search(r"Server:\s+Inference count: \d+", output), output[-4000:]
    # Every request it sent (its warm-up ones too) succeeded on the server.
    assert after.fail == before.fail
    assert after.success - before.success >= 200
    assert after.inference_count - before.inference_count >= 200 * rows_per_request


def test_perf_analyzer_concurrency_sweep(perf_analyzer, server, client) -> None:
    """A sweep in time windows, as operators run it; stability is loosened to 100% so a busy
    test machine cannot make it fail, since what is checked is that every level runs clean."""
    before = model_stats(client, SECNN)
    output = _run(
        perf_analyzer, server, SECNN,
        "--concurrency-range", "1:4:3", "--measurement-interval", "500", "--stability-percentage", "100",
    )
    throughputs = _throughputs(output)
    assert sorted(throughputs) == [1, 4]
    assert all(t > 0 for t in throughputs.values())
    assert model_stats(client, SECNN).fail == before.fail
