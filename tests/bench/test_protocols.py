"""bench.protocols: its HTTP bodies are what the server decodes, and a short run writes results.

The request builders are checked against the real server's own codec (the answer read back
equals the gRPC one inside bench.protocols.run before any figure); here a two-level run of half a
second per surface, attnserve only (MLServer lives in its own virtual environment), must write
every surface with no errors and the ratio rows. Nothing is asserted about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.protocols import binary_request, first_output, json_request
from tests.conftest import REPO_ROOT


def test_binary_body_is_header_then_raw_tensors_and_answers_read_back() -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    request = binary_request({"x": x}, ["y"])
    length = int(request.headers["Inference-Header-Content-Length"])
    header = json.loads(request.body[:length])
    assert header["inputs"][0]["parameters"]["binary_data_size"] == 24
    assert request.body[length:] == x.tobytes()
    assert json.loads(json_request({"x": x}).body)["inputs"][0]["data"] == x.ravel().tolist()

    answer_header = json.dumps({"outputs": [
        {"name": "a", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
        {"name": "y", "shape": [1, 6], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
    ]}).encode()
    answer = answer_header + np.zeros(2, np.float32).tobytes() + x.tobytes()
    got = first_output(answer, {"Inference-Header-Content-Length": str(len(answer_header))}, "y", np.dtype(np.float32))
    np.testing.assert_array_equal(got, x)


def test_short_run_writes_every_attnserve_surface(model_repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "protocols"
    done = subprocess.run(
        [sys.executable, "-m", "bench.protocols", "--repository", str(model_repository), "--model", "se_cnn_classifier",
         "--concurrency", "1,4", "--warmup", "0.2", "--duration", "0.5", "--no-mlserver",
         "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())
    assert set(results["surfaces"]) == {"attnserve grpc", "attnserve http binary", "attnserve http json"}
    for rows in results["surfaces"].values():
        assert [r["concurrency"] for r in rows] == [1, 4]
        assert all(r["requests"] > 0 and r["errors"] == {} for r in rows)
    assert results["ratios"]["attnserve http json / attnserve grpc, req/s at c=4"] > 0
    assert "| attnserve http binary | 4 |" in out.with_suffix(".md").read_text()
