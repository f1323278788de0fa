"""Overload: ten times the sustainable rate, open loop.

The model's queue holds at most ``QUEUE`` requests (``default_queue_policy.max_queue_size``).
Above that a request is refused at once with UNAVAILABLE (before it is accepted), so accepted
requests wait behind at most ``QUEUE`` others, memory stays flat, and the server is back to
normal as soon as the load stops. Asserted: every answer is a correct result or a queue-full
refusal, the server's own count of refusals and of computed rows matches the client's, the
queue never grows past its bound, RSS stays bounded, and every request after the load
succeeds. Measured (figures, never asserted): rates, latency of accepted and refused requests,
RSS, and the latency after the load.

The default run lasts 3 s (``ATTNSERVE_OVERLOAD_SECONDS``); the ``slow`` variant lasts 30 s.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import grpc
import numpy as np
import pytest

from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import grpc_service_pb2_grpc as pb_grpc
from service.proto.inference import model_config_pb2 as mc
from tests.conftest import ServerProcess
from tests.integration.support import HOLD_US, SAGAN, SECNN, sample_inputs, wait_for_the_delay, wait_until
from tests.reliability.support import percentile, rss_bytes

ROWS = 8  # rows per request (a preferred batch size of the generator)
QUEUE = 32  # max_queue_size, in requests
FACTOR = 10  # offered load / sustainable rate
OVERLOAD_SECONDS = float(os.environ.get("ATTNSERVE_OVERLOAD_SECONDS", "3"))
MiB = 1024 * 1024


def _bounded_queue(config: mc.ModelConfig) -> None:
    config.dynamic_batching.default_queue_policy.max_queue_size = QUEUE


def _request(arrays: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=SAGAN)
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype={"float32": "FP32", "int64": "INT64"}[array.dtype.name], shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    request.outputs.add(name="image")  # small answers: the load is on the model, not on the wire
    return request


def _image(response: pb.ModelInferResponse) -> np.ndarray:
    (index,) = [i for i, o in enumerate(response.outputs) if o.name == "image"]
    return np.frombuffer(response.raw_output_contents[index], np.float32).reshape(response.outputs[index].shape)


class Load:
    """Counts and latencies of one phase, per status."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {}
        self.messages: Counter[str] = Counter()
        self.wrong = 0

    def add(self, code: str, seconds: float, message: str = "") -> None:
        self.latency.setdefault(code, []).append(seconds)
        if message:
            self.messages[f"{code}: {message}"] += 1

    def count(self, code: str) -> int:
        return len(self.latency.get(code, []))

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.latency.values())


async def _call(stub, request, expected: np.ndarray, load: Load, check: bool) -> None:
    started = time.perf_counter()
    try:
        response = await stub.ModelInfer(request, timeout=120)
    except grpc.aio.AioRpcError as error:
        load.add(error.code().name, time.perf_counter() - started, error.details() or "")
        return
    load.add("OK", time.perf_counter() - started)
    if check and not np.allclose(_image(response), expected, rtol=1e-4, atol=1e-5):
        load.wrong += 1


async def _closed_loop(stub, request, expected, concurrency: int, seconds: float) -> tuple[float, Load]:
    load = Load()
    end = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < end:
            await _call(stub, request, expected, load, check=False)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return load.count("OK") / (time.perf_counter() - started), load


async def _open_loop(stub, request, expected, rate: float, seconds: float, server: ServerProcess) -> tuple[Load, dict]:
    """Send at ``rate`` per second for ``seconds`` whatever the answers; watch the server meanwhile."""
    load = Load()
    tasks: set[asyncio.Task] = set()
    watch = {"rss": [], "queue": []}
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def watcher() -> None:
        while True:
            watch["rss"].append(rss_bytes(server.pid))
            watch["queue"].append(await asyncio.to_thread(server.metric, "attnserve_queue_depth", model=SAGAN))
            await asyncio.sleep(0.25)  # a sampling period, not a synchronisation

    watching = asyncio.create_task(watcher())
    sent = 0
    while (due := started + sent / rate) < started + seconds:
        if due > loop.time():
            await asyncio.sleep(due - loop.time())  # pacing of an open-loop generator
        task = asyncio.create_task(_call(stub, request, expected, load, check=sent % 10 == 0))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    offered = sent / (loop.time() - started)
    await asyncio.gather(*list(tasks))
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    watch["offered_rate"] = offered
    watch["drained_s"] = loop.time() - started - seconds
    return load, watch


async def _overload(start_server, make_repository, model_repository, reference, figures, seconds: float) -> None:
    repository = make_repository(models=(SAGAN, SECNN), edits={SAGAN: _bounded_queue})
    server = start_server("--intra-op-threads", "1", repository=repository)
    arrays = sample_inputs(model_repository, SAGAN, ROWS, np.random.default_rng(70))
    request = _request(arrays)
    expected = reference.run(SAGAN, arrays)["image"]

    async with grpc.aio.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = Load()
        for _ in range(20):
            await _call(stub, request, expected, before, check=True)
        assert before.count("OK") == 20 and before.wrong == 0
        sustainable, _ = await _closed_loop(stub, request, expected, concurrency=4, seconds=2.0)
        rss_before = rss_bytes(server.pid)
        rejected_before = server.metric("attnserve_rejections_total", model=SAGAN, reason="queue_full")
        rows_before = server.metric("attnserve_inferences_total", model=SAGAN)

        load, watch = await _open_loop(stub, request, expected, FACTOR * sustainable, seconds, server)

        # Every answer is a correct result or an immediate queue-full refusal; nothing else.
        assert set(load.latency) <= {"OK", "UNAVAILABLE"}, load.messages
        assert all("max_queue_size" in m for m in load.messages), load.messages
        assert load.count("UNAVAILABLE") > 0, "the load never filled the queue"
        assert load.wrong == 0
        # The server counted exactly those refusals, and computed exactly the accepted rows.
        assert server.metric("attnserve_rejections_total", model=SAGAN, reason="queue_full") - rejected_before == load.count("UNAVAILABLE")
        assert server.metric("attnserve_inferences_total", model=SAGAN) - rows_before == ROWS * load.count("OK")
        assert max(watch["queue"]) <= QUEUE
        peak_rss = max(watch["rss"] + [rss_bytes(server.pid)])
        assert peak_rss - rss_before < 512 * MiB, (rss_before, peak_rss)

        # Load gone: every request succeeds again, right away.
        wait_until(lambda: server.metric("attnserve_queue_depth", model=SAGAN) == 0, what="queue empty")
        after = Load()
        for _ in range(20):
            await _call(stub, request, expected, after, check=True)
        assert after.count("OK") == 20 and after.wrong == 0, after.messages

    ms = lambda values, q: round(1000 * percentile(values, q), 2)  # noqa: E731
    ok, refused = load.latency.get("OK", []), load.latency.get("UNAVAILABLE", [])
    figures(
        seconds=seconds, rows_per_request=ROWS, max_queue_size=QUEUE,
        sustainable_rps=round(sustainable, 1), offered_rps=round(watch["offered_rate"], 1),
        accepted=load.count("OK"), refused=load.count("UNAVAILABLE"),
        accepted_rps=round(load.count("OK") / seconds, 1),
        accepted_ms_p50=ms(ok, 50), accepted_ms_p99=ms(ok, 99), accepted_ms_max=ms(ok, 100),
        refused_ms_p50=ms(refused, 50), refused_ms_p99=ms(refused, 99), refused_ms_max=ms(refused, 100),
        baseline_ms_p50=ms(before.latency["OK"], 50), after_ms_p50=ms(after.latency["OK"], 50),
        after_ms_max=ms(after.latency["OK"], 100), drained_after_load_s=round(watch["drained_s"], 3),
        rss_before_mib=round(rss_before / MiB, 1), rss_peak_mib=round(peak_rss / MiB, 1),
        queue_depth_max=max(watch["queue"]),
        # What the queue policy predicts for an accepted request: QUEUE requests ahead of it.
        queue_bound_ms=round(1000 * (QUEUE + 1) / max(load.count("OK") / seconds, 1e-9), 1),
    )


async def test_overload_short(start_server, make_repository, model_repository, reference, figures) -> None:
    await _overload(start_server, make_repository, model_repository, reference, figures, OVERLOAD_SECONDS)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_overload_30s(start_server, make_repository, model_repository, reference, figures) -> None:
    await _overload(start_server, make_repository, model_repository, reference, figures, 30.0)


# -- a bound on concurrent RPCs ---------------------------------------------------------------------
def _hold(config: mc.ModelConfig) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = HOLD_US
    wait_for_the_delay(config)
    del config.dynamic_batching.preferred_batch_size[:]


def test_max_concurrent_rpcs_refuses_at_once(start_server, make_repository, model_repository) -> None:
    """With --max-concurrent-rpcs 2 and two requests held in the queue, a third call is refused
    with RESOURCE_EXHAUSTED without waiting; the held two are answered when the server drains."""
    repository = make_repository(models=(SECNN,), edits={SECNN: _hold})
    server = start_server("--max-concurrent-rpcs", "2", repository=repository)
    arrays = sample_inputs(model_repository, SECNN, 1, np.random.default_rng(71))
    request = pb.ModelInferRequest(model_name=SECNN)
    request.inputs.add(name="image", datatype="FP32", shape=arrays["image"].shape)
    request.raw_input_contents.append(arrays["image"].tobytes())
    with grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        held = [stub.ModelInfer.future(request, timeout=120) for _ in range(2)]
        wait_until(lambda: server.metric("attnserve_queue_depth", model=SECNN) == 2, what="two requests held")
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=60)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        server.terminate()  # the drain computes what is queued
        for future in held:
            assert len(future.result(timeout=120).raw_output_contents) == 3
    assert server.wait(60) == 0


def test_max_concurrent_requests_over_http_refuses_at_once_but_not_probes(start_server, make_repository, model_repository) -> None:
    """The same bound on the HTTP port: two inference requests held, a third gets 429 with
    Retry-After at once, while the health probes (not counted) still answer 200; the held two
    are answered."""
    import http.client
    import json
    from concurrent.futures import ThreadPoolExecutor

    repository = make_repository(models=(SECNN,), edits={SECNN: _hold})
    server = start_server("--max-concurrent-rpcs", "2", repository=repository)
    host, port = server.http_url.split("://", 1)[1].rsplit(":", 1)
    arrays = sample_inputs(model_repository, SECNN, 1, np.random.default_rng(72))
    body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(arrays["image"].shape),
                                   "data": arrays["image"].ravel().tolist()}]}).encode()

    def call(method: str, path: str, payload: bytes | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            return reply.status, dict(reply.getheaders()), reply.read()
        finally:
            conn.close()

    infer = f"/v2/models/{SECNN}/infer"
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(call, "POST", infer, body) for _ in range(2)]
        wait_until(lambda: server.metric("attnserve_queue_depth", model=SECNN) == 2, what="two requests held")
        status, headers, answer = call("POST", infer, body)
        assert status == 429 and headers.get("Retry-After") == "1"
        assert "limit of 2 concurrent requests" in json.loads(answer)["error"]
        assert call("GET", "/v2/health/ready")[0] == 200  # probes are not counted
        assert call("GET", "/v2/health/live")[0] == 200
        server.terminate()  # the drain computes what is queued
        for future in held:
            status, _, answer = future.result(timeout=120)
            assert status == 200 and json.loads(answer)["outputs"]
    assert server.wait(60) == 0
