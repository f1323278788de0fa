"""A crash: kill -9, then start again on the same port.

Nothing is drained on SIGKILL; what matters is that a new process binds the same port at once
(no "address in use"), loads and warms every model before it reports ready, and answers the
first request correctly. The time from start to ready and the first request's latency are
figures for the notes. (SIGTERM under load is tests/integration/test_lifecycle.py.)
"""

from __future__ import annotations

import time

import numpy as np
import tritonclient.grpc as grpcclient

from tests.integration.support import MODELS, assert_matches, infer_inputs, sample_inputs


def test_kill_9_then_restart_is_ready_with_warm_models(start_server, model_repository, reference, figures) -> None:
    rng = np.random.default_rng(90)
    arrays = {m: sample_inputs(model_repository, m, 2, rng) for m in MODELS}
    first = start_server()
    port = first.url.rsplit(":", 1)[1]
    with grpcclient.InferenceServerClient(first.url) as client:
        for model in MODELS:
            assert_matches(client.infer(model, infer_inputs(arrays[model])), reference.run(model, arrays[model]))
    first.kill()  # SIGKILL: no drain, no cleanup
    assert first.returncode == -9

    started = time.perf_counter()
    second = start_server("--grpc-port", port)  # the last --grpc-port wins
    ready_s = time.perf_counter() - started
    assert second.url == first.url
    ready_line = second.wait_for_log("attnserve ready")
    assert all(f"{m}:1" in ready_line for m in MODELS) and "NOT loaded" not in ready_line
    # Warm-up ran before ready: every model's model_warmup samples are in the load, so the
    # first request is not the one that pays for session initialisation.
    first_ms = {}
    with grpcclient.InferenceServerClient(second.url) as client:
        assert client.is_server_ready()
        for model in MODELS:
            t = time.perf_counter()
            result = client.infer(model, infer_inputs(arrays[model]))
            first_ms[model] = round(1000 * (time.perf_counter() - t), 2)
            assert_matches(result, reference.run(model, arrays[model]))
        loaded = {s.name: s for s in client.get_inference_statistics().model_stats}
        assert all(loaded[m].inference_count == 2 for m in MODELS)  # warm-up is not counted as traffic
    figures(restart_to_ready_s=round(ready_s, 2), first_request_ms=first_ms,
            load_line=ready_line.split("attnserve ready: ", 1)[1])
