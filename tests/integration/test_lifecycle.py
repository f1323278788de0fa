"""The server process's life: draining on SIGTERM without losing accepted work, models that fail
to load (and recover), and refusing to start on bad settings."""

from __future__ import annotations

import asyncio
import queue
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.proto.inference import model_config_pb2 as mc
from tests.conftest import DEFAULT_MODELS, REPO_ROOT, read_model_config, write_model_config
from tests.integration.support import (
    ENCODER,
    HOLD_US,
    NOT_SERVING,
    SAGAN,
    SECNN,
    SERVING,
    assert_matches,
    infer_inputs,
    message_of,
    model_stats,
    sample_inputs,
    status_of,
    wait_until_async,
    wait_for_the_delay,
)

DRAINING = "draining: refusing new requests"


def _hold_queue(config: mc.ModelConfig) -> None:
    """Requests wait in the queue (no preferred size, a delay of minutes) until a drain."""
    config.dynamic_batching.max_queue_delay_microseconds = HOLD_US
    wait_for_the_delay(config)
    del config.dynamic_batching.preferred_batch_size[:]


# A request the server never accepted is refused with UNAVAILABLE: by the data plane while it
# drains, or by a closed port once it has stopped. Never CANCELLED: the server keeps refusing
# until callers stop coming before grpc stops (issue 18; tests/reliability/test_drain.py).
REFUSED = {"UNAVAILABLE"}


async def test_sigterm_during_load_loses_no_accepted_request(start_server, make_repository, model_repository, reference) -> None:
    """Held requests (accepted, queued) and steady traffic on a second model when SIGTERM
    arrives: every accepted request is answered correctly, later ones are refused, nothing
    fails any other way, and the process exits 0."""
    repository = make_repository(models=(SECNN, ENCODER), edits={SECNN: _hold_queue})
    server = start_server(repository=repository)
    client = aioclient.InferenceServerClient(server.url)
    rng = np.random.default_rng(30)
    held = [sample_inputs(model_repository, SECNN, 1 + i % 3, rng) for i in range(12)]
    traffic = [sample_inputs(model_repository, ENCODER, 1, rng, length=4 + i) for i in range(8)]
    outcomes: Counter[str] = Counter()

    async def worker(arrays: dict[str, np.ndarray]) -> None:
        expected = reference.run(ENCODER, arrays)
        for _ in range(5000):  # bounded; ends at the first refusal
            try:
                result = await client.infer(ENCODER, infer_inputs(arrays, aioclient), client_timeout=60)
            except InferenceServerException as error:
                outcomes[status_of(error)] += 1
                if status_of(error) not in REFUSED:
                    outcomes[f"{status_of(error)}: {message_of(error)}"] += 1
                return
            assert_matches(result, expected)
            outcomes["OK"] += 1

    try:
        held_tasks = [asyncio.create_task(client.infer(SECNN, infer_inputs(h, aioclient))) for h in held]
        workers = [asyncio.create_task(worker(t)) for t in traffic]
        await wait_until_async(
            lambda: server.metric("attnserve_queue_depth", model=SECNN) == len(held), what="held requests queued"
        )
        await wait_until_async(lambda: outcomes["OK"] >= 20, what="traffic flowing")
        assert not any(t.done() for t in held_tasks)

        server.terminate()
        await asyncio.to_thread(server.wait_for_log, DRAINING)
        late = sample_inputs(model_repository, SECNN, 1, rng)
        for _ in range(3):
            with pytest.raises(InferenceServerException) as caught:
                await client.infer(SECNN, infer_inputs(late, aioclient), client_timeout=60)
            assert status_of(caught.value) in REFUSED, message_of(caught.value)

        for arrays, result in zip(held, await asyncio.gather(*held_tasks)):
            assert_matches(result, reference.run(SECNN, arrays))
        await asyncio.gather(*workers)
    finally:
        await client.close()
    assert set(outcomes) <= {"OK", *REFUSED}, outcomes
    assert sum(outcomes[code] for code in REFUSED) == len(traffic)  # each worker ended refused
    assert await asyncio.to_thread(server.wait, 60) == 0
    assert "stopped in" in server.log
    assert " ERROR " not in server.log and "exit timeout reached" not in server.log, server.log[-3000:]


def test_stream_open_across_sigterm(start_server, make_repository, model_repository, reference) -> None:
    """A client holding a stream: answered before SIGTERM, refused after it, and the held
    stream does not keep the process from exiting within the exit timeout."""
    server = start_server("--exit-timeout-secs", "3", "--load-model", SECNN, repository=make_repository(models=(SECNN,)))
    arrays = sample_inputs(model_repository, SECNN, 2, np.random.default_rng(31))
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(SECNN, infer_inputs(arrays), request_id="before")
        result, error = answers.get(timeout=60)
        assert error is None, error
        assert_matches(result, reference.run(SECNN, arrays))

        server.terminate()
        server.wait_for_log(DRAINING)
        assert re.search(r"up to 3(\.0*)?s", server.log)  # the drain is bounded by --exit-timeout-secs
        client.async_stream_infer(SECNN, infer_inputs(arrays), request_id="after")
        # The stream takes no request once the server drains: it ends with UNAVAILABLE.
        result, error = answers.get(timeout=60)
        assert result is None and error is not None
        assert status_of(error) == "UNAVAILABLE", error
        assert server.wait(60) == 0
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def test_health_turns_not_serving_on_sigterm(start_server, make_repository) -> None:
    """What a Kubernetes readiness probe or a load balancer sees: grpc.health.v1 watchers of the
    server and of a model are told NOT_SERVING as soon as the drain starts."""
    server = start_server("--exit-timeout-secs", "1", "--load-model", SECNN, repository=make_repository(models=(SECNN,)))
    with grpc.insecure_channel(server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = {name: stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=60) for name in ("", SECNN)}
        assert {name: next(w).status for name, w in watches.items()} == {"": SERVING, SECNN: SERVING}
        server.terminate()
        assert {name: next(w).status for name, w in watches.items()} == {"": NOT_SERVING, SECNN: NOT_SERVING}
    assert server.wait(60) == 0


# -- models that fail to load ------------------------------------------------------------------------
def _rename_input(config: mc.ModelConfig) -> None:
    config.input[0].name = "noise"


def test_broken_models_are_unavailable_and_recover(start_server, make_repository, model_repository, reference) -> None:
    repository = make_repository(edits={SAGAN: _rename_input})
    (repository / ENCODER / "1" / "model.onnx").write_bytes(b"this is not an onnx model" * 100)
    server = start_server(repository=repository)
    assert "NOT loaded" in server.log
    rng = np.random.default_rng(33)

    with grpcclient.InferenceServerClient(server.url) as client:
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index[SECNN].state == "READY"
        assert index[ENCODER].state == "UNAVAILABLE" and index[ENCODER].reason
        assert index[SAGAN].state == "UNAVAILABLE" and "noise" in index[SAGAN].reason
        assert client.is_server_ready()  # one good model is enough to serve
        for broken in (SAGAN, ENCODER):
            assert not client.is_model_ready(broken)
            with pytest.raises(InferenceServerException) as caught:
                client.infer(broken, infer_inputs(sample_inputs(model_repository, broken, 1, rng)))
            assert status_of(caught.value) == "UNAVAILABLE"
            assert broken in message_of(caught.value)
        good = sample_inputs(model_repository, SECNN, 3, rng)
        assert_matches(client.infer(SECNN, infer_inputs(good)), reference.run(SECNN, good))

        # Loading again without a fix fails again, with the reason, and changes nothing.
        with pytest.raises(InferenceServerException) as caught:
            client.load_model(ENCODER)
        assert status_of(caught.value) == "FAILED_PRECONDITION"
        assert "model.onnx" in message_of(caught.value)
        assert not client.is_model_ready(ENCODER)
        ready = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
        assert ready == set(DEFAULT_MODELS) - {SAGAN, ENCODER}

        # Fix the files; RepositoryModelLoad brings each model back.
        shutil.copyfile(model_repository / ENCODER / "1" / "model.onnx", repository / ENCODER / "1" / "model.onnx")
        shutil.copyfile(model_repository / SAGAN / "config.pbtxt", repository / SAGAN / "config.pbtxt")
        for model in (ENCODER, SAGAN):
            client.load_model(model)
            assert client.is_model_ready(model)
            arrays = sample_inputs(model_repository, model, 2, rng)
            assert_matches(client.infer(model, infer_inputs(arrays)), reference.run(model, arrays))
        assert {m.state for m in client.get_model_repository_index().models} == {"READY"}
    assert server.stop() == 0


def test_reload_replaces_a_serving_model(start_server, make_repository, model_repository, reference) -> None:
    """RepositoryModelLoad on a ready model picks up a changed config.pbtxt."""
    repository = make_repository(models=(SECNN,))
    server = start_server(repository=repository)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.get_model_config(SECNN).config.dynamic_batching.max_queue_delay_microseconds != 1234
        config = read_model_config(repository / SECNN)
        config.dynamic_batching.max_queue_delay_microseconds = 1234
        write_model_config(repository / SECNN, config)
        client.load_model(SECNN)
        assert client.get_model_config(SECNN).config.dynamic_batching.max_queue_delay_microseconds == 1234
        arrays = sample_inputs(model_repository, SECNN, 2, np.random.default_rng(34))
        assert_matches(client.infer(SECNN, infer_inputs(arrays)), reference.run(SECNN, arrays))
        assert model_stats(client, SECNN).success >= 1


# -- refusing to start ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--model-repository", "/nonexistent/attnserve-models"], ["/nonexistent/attnserve-models"]),
        (["--exit-timeout-secs", "0"], ["exit_timeout"]),
        (["--max-message-bytes", "1024"], ["max_message_bytes"]),
        (["--grpc-port", "70000"], ["grpc_port"]),
    ],
    ids=["missing-repository", "exit-timeout", "message-limit", "port"],
)
def test_bad_settings_exit_2(model_repository: Path, flags: list[str], words: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--model-repository", str(model_repository),
         "--grpc-port", "0", "--metrics-port", "0", *flags],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    for word in words:
        assert word in done.stderr
    assert "Traceback" not in done.stderr
