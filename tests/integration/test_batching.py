"""Dynamic batching seen from outside: batches form under concurrency, ragged sequences share a
batch and each gets its own answer, cancelled and expired requests leave their batch-mates alone
and are never computed, and a full queue refuses at once.

Most tests use a dedicated server whose models hold their queue for a long time
(``max_queue_delay`` of minutes, ``preferred_batch_size: 4``), so what goes into a batch is
decided by the test, not by timing: a batch runs exactly when its fourth row arrives. Progress
is observed through the server (the ``attnserve_queue_depth`` gauge, ModelStatistics).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Callable

import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from service.proto.inference import model_config_pb2 as mc
from tests.conftest import ServerProcess, copy_repository
from tests.integration.support import (
    ENCODER,
    HOLD_US,
    SAGAN,
    SECNN,
    assert_matches,
    infer_inputs,
    message_of,
    model_stats,
    sample_inputs,
    spec_of,
    status_of,
    wait_until_async,
    wait_for_the_delay,
)

BATCH = 4  # the preferred batch size of the held models


def _hold(preferred: tuple[int, ...] = (BATCH,), max_queue_size: int = 0) -> Callable[[mc.ModelConfig], None]:
    def edit(config: mc.ModelConfig) -> None:
        db = config.dynamic_batching
        db.max_queue_delay_microseconds = HOLD_US
        wait_for_the_delay(config)
        # No padding bound: the ragged test pads lengths 3, 17 and 40 into one execution.
        if "attnserve.max_padding_ratio" in config.parameters:
            del config.parameters["attnserve.max_padding_ratio"]
        del db.preferred_batch_size[:]
        db.preferred_batch_size.extend(preferred)
        db.default_queue_policy.max_queue_size = max_queue_size

    return edit


@pytest.fixture(scope="module")
def held_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_repository(
        model_repository,
        tmp_path_factory.mktemp("held_repository"),
        edits={
            SECNN: _hold(),
            ENCODER: _hold(),
            # No preferred size: a batch waits for the full delay (or a drain).
            SAGAN: _hold(preferred=(), max_queue_size=2),
        },
    )


@pytest.fixture
def held_server(start_server, held_repository: Path) -> Callable[[str], ServerProcess]:
    return lambda model: start_server("--load-model", model, repository=held_repository)


@pytest.fixture
async def aio(request) -> AsyncIterator[Callable[[ServerProcess], aioclient.InferenceServerClient]]:
    clients: list[aioclient.InferenceServerClient] = []

    def connect(server: ServerProcess) -> aioclient.InferenceServerClient:
        clients.append(aioclient.InferenceServerClient(server.url))
        return clients[-1]

    yield connect
    for c in clients:
        await c.close()


def _depth(server: ServerProcess, model: str) -> Callable[[], float]:
    return lambda: server.metric("attnserve_queue_depth", model=model)


async def _queue_reaches(server: ServerProcess, model: str, depth: int) -> None:
    await wait_until_async(lambda: _depth(server, model)() == depth, what=f"{model} queue depth {depth}")


async def _within(awaitable, timeout: float = 60.0):
    """A batch that should have run did not: fail now rather than when the held delay ends."""
    return await asyncio.wait_for(awaitable, timeout)


def _new_batches(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {size: n - before.get(size, 0) for size, n in after.items() if n != before.get(size, 0)}


# -- batches form -----------------------------------------------------------------------------------
async def test_concurrent_requests_share_executions(server: ServerProcess, client, model_repository, reference) -> None:
    """The shipped config (short delay): 32 concurrent one-row requests run in fewer executions."""
    rng = np.random.default_rng(20)
    requests = [sample_inputs(model_repository, SECNN, 1, rng) for _ in range(32)]
    before = model_stats(client, SECNN)
    aio = aioclient.InferenceServerClient(server.url)
    try:
        results = await asyncio.gather(*(aio.infer(SECNN, infer_inputs(r, aioclient)) for r in requests))
    finally:
        await aio.close()
    after = model_stats(client, SECNN)
    for arrays, result in zip(requests, results):
        assert_matches(result, reference.run(SECNN, arrays))
    assert after.inference_count - before.inference_count == 32
    executions = after.execution_count - before.execution_count
    assert executions < 32
    batches = _new_batches(before.batch_sizes, after.batch_sizes)
    assert max(batches) > 1, batches
    assert sum(size * n for size, n in batches.items()) == 32
    assert sum(batches.values()) == executions


async def test_batch_runs_when_preferred_size_is_reached(held_server, aio, model_repository, reference) -> None:
    server = held_server(SECNN)
    client = aio(server)
    rng = np.random.default_rng(21)
    first = [sample_inputs(model_repository, SECNN, 1, rng) for _ in range(BATCH - 1)]
    tasks = [asyncio.create_task(client.infer(SECNN, infer_inputs(r, aioclient))) for r in first]
    await _queue_reaches(server, SECNN, BATCH - 1)
    assert not any(t.done() for t in tasks)  # held: three rows are not a preferred batch
    last = sample_inputs(model_repository, SECNN, 1, rng)
    results = await _within(asyncio.gather(*tasks, client.infer(SECNN, infer_inputs(last, aioclient))))
    for arrays, result in zip([*first, last], results):
        assert_matches(result, reference.run(SECNN, arrays))
    stats = (await client.get_inference_statistics(SECNN)).model_stats[0]
    assert (stats.inference_count, stats.execution_count) == (BATCH, 1)
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(BATCH, 1)]


async def test_ragged_sequences_batch_together(held_server, aio, model_repository, reference) -> None:
    """Encoder requests of three lengths share one padded execution; each answer is the answer
    to that request alone: padding never leaks into embedding, logits or attention."""
    server = held_server(ENCODER)
    client = aio(server)
    rng = np.random.default_rng(22)
    lengths = (3, 40, 17)
    requests = [sample_inputs(model_repository, ENCODER, 1, rng, length=n) for n in lengths]
    # A second row with padding of its own (mask 0 at the end) rides along in the first
    # request: 2 + 1 + 1 rows make the preferred batch of 4 when the last request arrives.
    extra = sample_inputs(model_repository, ENCODER, 1, rng, length=lengths[0])
    extra["attention_mask"][0, -1] = 0
    requests[0] = {k: np.concatenate([requests[0][k], extra[k]]) for k in requests[0]}
    tasks = [asyncio.create_task(client.infer(ENCODER, infer_inputs(r, aioclient))) for r in requests[:-1]]
    await _queue_reaches(server, ENCODER, len(tasks))
    results = await _within(asyncio.gather(*tasks, client.infer(ENCODER, infer_inputs(requests[-1], aioclient))))

    stats = (await client.get_inference_statistics(ENCODER)).model_stats[0]
    assert sum(r["input_ids"].shape[0] for r in requests) == BATCH
    assert (stats.inference_count, stats.execution_count) == (BATCH, 1)
    for arrays, length, result in zip(requests, lengths, results):
        alone = reference.run(ENCODER, arrays)
        assert_matches(result, alone)  # includes attention at [rows, heads, length, length]
        attention = result.as_numpy("attention")
        assert attention.shape[-2:] == (length, length)
        np.testing.assert_allclose(attention.sum(axis=-1), 1.0, rtol=1e-5, atol=1e-5)


# -- cancelled and expired requests -----------------------------------------------------------------
async def test_cancelled_request_leaves_its_batch_mates_alone(held_server, aio, model_repository, reference) -> None:
    server = held_server(SECNN)
    client = aio(server)
    rng = np.random.default_rng(23)
    doomed = sample_inputs(model_repository, SECNN, 1, rng)
    mates = [sample_inputs(model_repository, SECNN, 1, rng) for _ in range(BATCH)]

    doomed_task = asyncio.create_task(client.infer(SECNN, infer_inputs(doomed, aioclient)))
    first = [asyncio.create_task(client.infer(SECNN, infer_inputs(m, aioclient))) for m in mates[:2]]
    await _queue_reaches(server, SECNN, 3)
    doomed_task.cancel()  # the client goes away: grpc cancels the call on the server
    with pytest.raises(asyncio.CancelledError):
        await doomed_task
    await _queue_reaches(server, SECNN, 2)
    assert server.metric("attnserve_rejections_total", model=SECNN, reason="cancelled") == 1

    rest = [client.infer(SECNN, infer_inputs(m, aioclient)) for m in mates[2:]]
    results = await _within(asyncio.gather(*first, *rest))
    for arrays, result in zip(mates, results):
        assert_matches(result, reference.run(SECNN, arrays))
    stats = (await client.get_inference_statistics(SECNN)).model_stats[0]
    # The cancelled request was never computed: one execution of exactly the four mates.
    assert (stats.inference_count, stats.execution_count) == (BATCH, 1)


async def test_client_deadline_expires_in_queue(held_server, aio, model_repository, reference) -> None:
    server = held_server(SECNN)
    client = aio(server)
    rng = np.random.default_rng(24)
    mates = [sample_inputs(model_repository, SECNN, 1, rng) for _ in range(BATCH)]
    first = asyncio.create_task(client.infer(SECNN, infer_inputs(mates[0], aioclient)))
    await _queue_reaches(server, SECNN, 1)

    with pytest.raises(InferenceServerException) as caught:
        await client.infer(SECNN, infer_inputs(sample_inputs(model_repository, SECNN, 1, rng), aioclient), client_timeout=0.5)
    assert status_of(caught.value) == "DEADLINE_EXCEEDED"
    await _queue_reaches(server, SECNN, 1)  # the expired one left; the first is still held
    assert not first.done()

    results = await _within(asyncio.gather(first, *(client.infer(SECNN, infer_inputs(m, aioclient)) for m in mates[1:])))
    for arrays, result in zip(mates, results):
        assert_matches(result, reference.run(SECNN, arrays))
    stats = (await client.get_inference_statistics(SECNN)).model_stats[0]
    assert (stats.inference_count, stats.execution_count) == (BATCH, 1)


async def test_queue_timeout_parameter(held_server, aio, model_repository, reference) -> None:
    """The v2 ``timeout`` parameter (microseconds; allow_timeout_override is on) bounds the
    time in the queue; the server answers DEADLINE_EXCEEDED itself."""
    server = held_server(SECNN)
    client = aio(server)
    rng = np.random.default_rng(25)
    with pytest.raises(InferenceServerException) as caught:
        await client.infer(SECNN, infer_inputs(sample_inputs(model_repository, SECNN, 1, rng), aioclient), timeout=200_000)
    assert status_of(caught.value) == "DEADLINE_EXCEEDED"
    assert "queue" in message_of(caught.value)
    assert server.metric("attnserve_rejections_total", model=SECNN, reason="deadline") == 1
    assert _depth(server, SECNN)() == 0

    # The server still serves, and the timed-out request was never computed.
    mates = [sample_inputs(model_repository, SECNN, 1, rng) for _ in range(BATCH)]
    results = await _within(asyncio.gather(*(client.infer(SECNN, infer_inputs(m, aioclient)) for m in mates)))
    for arrays, result in zip(mates, results):
        assert_matches(result, reference.run(SECNN, arrays))
    stats = (await client.get_inference_statistics(SECNN)).model_stats[0]
    assert (stats.inference_count, stats.execution_count) == (BATCH, 1)


# -- a full queue -----------------------------------------------------------------------------------
async def test_full_queue_rejects_at_once(held_server, aio, model_repository, reference) -> None:
    """max_queue_size 2: the third request is refused with UNAVAILABLE while two wait; the two
    are answered when the model is unloaded (an unload drains the queue)."""
    server = held_server(SAGAN)
    client = aio(server)
    rng = np.random.default_rng(26)
    queued = [sample_inputs(model_repository, SAGAN, 1, rng) for _ in range(2)]
    tasks = [asyncio.create_task(client.infer(SAGAN, infer_inputs(q, aioclient))) for q in queued]
    await _queue_reaches(server, SAGAN, 2)

    for _ in range(3):
        with pytest.raises(InferenceServerException) as caught:
            await client.infer(SAGAN, infer_inputs(sample_inputs(model_repository, SAGAN, 1, rng), aioclient))
        assert status_of(caught.value) == "UNAVAILABLE"
        assert "queue" in message_of(caught.value)
    assert server.metric("attnserve_rejections_total", model=SAGAN, reason="queue_full") == 3
    assert not any(t.done() for t in tasks)

    await client.unload_model(SAGAN)
    for arrays, result in zip(queued, await _within(asyncio.gather(*tasks))):
        assert_matches(result, reference.run(SAGAN, arrays))


async def test_request_outside_limits_never_joins_a_batch(held_server, aio, model_repository, reference) -> None:
    """A sequence longer than the declared limit is refused before it is queued, so it cannot
    fail the batch it would have joined; its would-be batch-mates run as one batch."""
    server = held_server(ENCODER)
    client = aio(server)
    rng = np.random.default_rng(27)
    limit = spec_of(model_repository, ENCODER).input("input_ids").max_dims[0]
    mates = [sample_inputs(model_repository, ENCODER, 1, rng, length=8 + i) for i in range(BATCH)]
    tasks = [asyncio.create_task(client.infer(ENCODER, infer_inputs(m, aioclient))) for m in mates[:-1]]
    await _queue_reaches(server, ENCODER, BATCH - 1)

    too_long = sample_inputs(model_repository, ENCODER, 1, rng, length=limit + 1)
    with pytest.raises(InferenceServerException) as caught:
        await client.infer(ENCODER, infer_inputs(too_long, aioclient))
    assert status_of(caught.value) == "INVALID_ARGUMENT"
    assert _depth(server, ENCODER)() == BATCH - 1 and not any(t.done() for t in tasks)

    results = await _within(asyncio.gather(*tasks, client.infer(ENCODER, infer_inputs(mates[-1], aioclient))))
    for arrays, result in zip(mates, results):
        assert_matches(result, reference.run(ENCODER, arrays))
    stats = (await client.get_inference_statistics(ENCODER)).model_stats[0]
    assert (stats.inference_count, stats.execution_count) == (BATCH, 1)
