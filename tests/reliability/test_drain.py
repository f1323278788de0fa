"""SIGTERM under load: every request is answered, or refused with UNAVAILABLE before any work.

The scenario of issue 18: N grpc.aio clients on one channel, each in a closed loop (a request,
its answer, the next request), against the default SE-CNN on one of three surfaces: unary v2
ModelInfer, ModelStreamInfer (one stream per client) and the attnserve API's Classify. Once
every client has been answered, the server gets SIGTERM. A client stops at its first refusal,
as one behind a load balancer would go to another replica. Any other outcome (CANCELLED
above all: neither done nor safe to retry) fails the test, and the server must exit 0 after
draining on its own, not by reaching its exit timeout.

Each case runs ``ATTNSERVE_DRAIN_REPEATS`` times (default 2; the issue's measure is 20):
``ATTNSERVE_DRAIN_REPEATS=20 pytest tests/reliability/test_drain.py -s`` prints the totals.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from service.proto.attnserve.v1 import attnserve_pb2 as api_pb
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_grpc
from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.integration.support import NOT_SERVING, SECNN, sample_inputs, wait_until_async

REPEATS = int(os.environ.get("ATTNSERVE_DRAIN_REPEATS", "2"))
EXIT_TIMEOUT_S = 20  # the drain must end by itself, well before this
CALL_TIMEOUT_S = 30.0
OK, UNAVAILABLE = "OK", "UNAVAILABLE"
DRAINING = "draining: refusing new requests"
QUIET = "quiet period"


@dataclass
class Outcomes:
    """What the clients saw: status names, and the details of anything else than OK/UNAVAILABLE."""

    codes: Counter = field(default_factory=Counter)
    strange: Counter = field(default_factory=Counter)
    answered_clients: set[int] = field(default_factory=set)
    wrong_answers: int = 0

    def record(self, client: int, code: str, details: str = "") -> None:
        self.codes[code] += 1
        if code == OK:
            self.answered_clients.add(client)
        elif code != UNAVAILABLE:
            self.strange[f"{code}: {details}"] += 1


# -- the three surfaces: one closed-loop client each ----------------------------------------------
class Load:
    def __init__(self, channel: grpc.aio.Channel, image: np.ndarray, expected: np.ndarray, png: bytes) -> None:
        self.v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        self.api = api_grpc.AttnServeStub(channel)
        self.request = pb.ModelInferRequest(model_name=SECNN)
        self.request.inputs.add(name="image", datatype="FP32", shape=list(image.shape))
        self.request.raw_input_contents.append(image.tobytes())
        self.request.outputs.add(name="probabilities")
        self.expected = expected
        self.classify_request = api_pb.ClassifyRequest(model=SECNN, images=[png], top_k=3)
        self.outcomes = Outcomes()

    def _check(self, response: pb.ModelInferResponse) -> None:
        got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(self.expected.shape)
        if not np.allclose(got, self.expected, rtol=1e-4, atol=1e-5):
            self.outcomes.wrong_answers += 1

    async def unary(self, client: int) -> None:
        while True:
            try:
                self._check(await self.v2.ModelInfer(self.request, timeout=CALL_TIMEOUT_S))
            except grpc.aio.AioRpcError as error:
                self.outcomes.record(client, error.code().name, error.details() or "")
                return
            self.outcomes.record(client, OK)

    async def classify(self, client: int) -> None:
        while True:
            try:
                reply = await self.api.Classify(self.classify_request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                self.outcomes.record(client, error.code().name, error.details() or "")
                return
            if len(reply.results) != 1 or len(reply.results[0].labels) != 3:
                self.outcomes.wrong_answers += 1
            self.outcomes.record(client, OK)

    async def stream(self, client: int) -> None:
        """One stream, one request outstanding: each answer or error message is that request's
        outcome; when the stream ends, its status is the outcome of the request it still held."""
        call = self.v2.ModelStreamInfer(timeout=CALL_TIMEOUT_S)
        try:
            while True:
                try:
                    await call.write(self.request)
                except asyncio.InvalidStateError:  # the stream already ended: read its status
                    pass
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    code = await call.code()
                    self.outcomes.record(client, code.name, await call.details() or "")
                    return
                if reply.error_message:
                    self.outcomes.record(client, "STREAM_ERROR", reply.error_message)
                    return
                self._check(reply.infer_response)
                self.outcomes.record(client, OK)
        except grpc.aio.AioRpcError as error:
            self.outcomes.record(client, error.code().name, error.details() or "")
        finally:
            call.cancel()


SURFACES: dict[str, Callable[[Load], Callable[[int], Awaitable[None]]]] = {
    "unary": lambda load: load.unary,
    "stream": lambda load: load.stream,
    "api": lambda load: load.classify,
}


@pytest.fixture(scope="module")
def inputs(model_repository, reference) -> tuple[np.ndarray, np.ndarray, bytes]:
    """One v2 image with its reference probabilities, and one PNG for Classify."""
    image = sample_inputs(model_repository, SECNN, 1, np.random.default_rng(180))["image"]
    expected = reference.run(SECNN, {"image": image})["probabilities"]
    pixels = np.random.default_rng(181).integers(0, 256, size=(28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return image, expected, buffer.getvalue()


def start(start_server, *flags: str) -> ServerProcess:
    return start_server("--load-model", SECNN, "--exit-timeout-secs", str(EXIT_TIMEOUT_S), *flags)


@pytest.mark.parametrize("repeat", range(REPEATS), ids=lambda r: f"run{r + 1}")
@pytest.mark.parametrize("clients", [48, 256])
@pytest.mark.parametrize("surface", list(SURFACES))
async def test_sigterm_under_load_answers_or_refuses_every_request(
    start_server, inputs, figures, surface: str, clients: int, repeat: int
) -> None:
    server = start(start_server)
    async with grpc.aio.insecure_channel(server.url) as channel:
        load = Load(channel, *inputs)
        client = SURFACES[surface](load)
        workers = [asyncio.create_task(client(i)) for i in range(clients)]
        try:
            await wait_until_async(
                lambda: len(load.outcomes.answered_clients) == clients or any(w.done() for w in workers),
                timeout=120, what=f"all {clients} clients answered once",
            )
            assert not any(w.done() for w in workers), (load.outcomes.codes, load.outcomes.strange)
            signalled = time.monotonic()
            server.terminate()
            await asyncio.wait_for(asyncio.gather(*workers), timeout=2 * CALL_TIMEOUT_S)
        finally:
            for worker in workers:
                worker.cancel()
        code = await asyncio.to_thread(server.wait, 60)
        exit_s = time.monotonic() - signalled

    seen = load.outcomes
    figures(surface=surface, clients=clients, requests=sum(seen.codes.values()), answered=seen.codes[OK],
            unavailable=seen.codes[UNAVAILABLE], cancelled=seen.codes["CANCELLED"],
            other=sum(seen.strange.values()) - seen.codes["CANCELLED"], exit_s=round(exit_s, 2))
    assert not seen.strange, f"answers that are neither success nor UNAVAILABLE: {dict(seen.strange)}"
    assert seen.wrong_answers == 0
    assert seen.codes[UNAVAILABLE] == clients  # each client ended at a refusal, none hung
    assert code == 0, server.log[-3000:]
    assert "stopped in" in server.log and "exit timeout reached" not in server.log, server.log[-3000:]
    assert " ERROR " not in server.log and "Traceback" not in server.log, server.log[-3000:]


async def test_quiet_period_serves_while_reporting_not_ready(start_server, inputs) -> None:
    """``--drain-quiet-secs``: after SIGTERM the server reports NOT_SERVING (health and
    ServerReady) yet answers every request, so clients still routed to it lose nothing while a
    load balancer lets go of it; then it drains. A second SIGTERM ends the quiet period early
    (here it stands in for the period's end, which would otherwise be a wait in the test)."""
    server = start(start_server, "--drain-quiet-secs", "600")
    async with grpc.aio.insecure_channel(server.url) as channel:
        load = Load(channel, *inputs)
        health = health_pb2_grpc.HealthStub(channel)
        stream = asyncio.create_task(load.stream(0))  # a stream opened before the signal
        await wait_until_async(lambda: load.outcomes.codes[OK] > 0, what="the stream answered")

        server.terminate()
        await asyncio.to_thread(server.wait_for_log, QUIET)
        for service in ("", SECNN):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S)
            assert reply.status == NOT_SERVING, service
        assert not (await load.v2.ServerReady(pb.ServerReadyRequest(), timeout=CALL_TIMEOUT_S)).ready
        assert not (await load.v2.ModelReady(pb.ModelReadyRequest(name=SECNN), timeout=CALL_TIMEOUT_S)).ready
        for _ in range(5):  # new calls during the quiet period are served, and answered correctly
            load._check(await load.v2.ModelInfer(load.request, timeout=CALL_TIMEOUT_S))
            await load.api.Classify(load.classify_request, timeout=CALL_TIMEOUT_S)
        streamed = load.outcomes.codes[OK]
        await wait_until_async(lambda: load.outcomes.codes[OK] > streamed, what="the stream still answered")
        assert DRAINING not in server.log

        server.terminate()  # the second signal: drain now
        await asyncio.wait_for(stream, timeout=2 * CALL_TIMEOUT_S)
        assert await asyncio.to_thread(server.wait, 60) == 0
    assert load.outcomes.wrong_answers == 0
    assert not load.outcomes.strange, load.outcomes.strange
    assert load.outcomes.codes[UNAVAILABLE] == 1  # the stream ended refused, not cut off
    assert server.log.index(QUIET) < server.log.index(DRAINING)
