"""perf_analyzer over HTTP (-i http) on every default model: Triton's load generator reads the
metadata, config and statistics through the REST port and sends JSON + binary requests."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from tests.integration.http.conftest import address
from tests.integration.support import ENCODER, SAGAN, SECNN, model_stats, sample_inputs
from tests.integration.test_perf_analyzer import RUN_TIMEOUT_S, _input_file, _throughputs, perf_analyzer  # noqa: F401

REQUESTS = 100


@pytest.mark.parametrize(("model", "mode"), [(SECNN, "sync"), (SAGAN, "async"), (ENCODER, "sync")])
def test_perf_analyzer_over_http(perf_analyzer, server, client, model_repository, tmp_path, model, mode) -> None:  # noqa: F811
    binary, env = perf_analyzer
    flags = ["--concurrency-range", "4", "--request-count", str(REQUESTS)]
    if mode == "async":
        flags.append("--async")
    if model == SECNN:
        flags += ["-b", "2"]
    else:  # valid labels and token ids, as in the gRPC test
        rng = np.random.default_rng(41)
        samples = [sample_inputs(model_repository, model, 1, rng, length=16) for _ in range(8)]
        flags += ["--input-data", str(_input_file(tmp_path / f"{model}.json", samples))]
        if model == ENCODER:
            flags += ["--shape", "input_ids:16", "--shape", "attention_mask:16"]
    before = model_stats(client, model)
    argv = [binary, "-m", model, "-i", "http", "-u", address(server), *flags]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}\n{output[-6000:]}"
    assert _throughputs(output)[4] > 0
    assert re.search(rf"Request count: {REQUESTS}\b", output), output[-4000:]
    assert re.search(r"Server:\s+Inference count: \d+", output), output[-4000:]  # statistics read over HTTP
    after = model_stats(client, model)
    assert after.fail == before.fail and after.success - before.success >= REQUESTS
