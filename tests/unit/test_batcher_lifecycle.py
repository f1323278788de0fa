"""DynamicBatcher: failing executions, bad outputs, stop() and policy validation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import BatchingPolicy, DynamicBatcher
from service.errors import InternalError, ModelNotReady, ShuttingDown
from tests.unit.test_batcher_fakes import (
    FakeModel,
    Harness,
    RecordingObserver,
    assert_outputs,
    expected,
    record_loop_errors,
    rows,
)

pytestmark = pytest.mark.timeout(20)  # a hang guard; no test asserts on time


# ---- execution failures --------------------------------------------------------------------------


async def test_execute_error_fails_the_whole_batch_and_the_batcher_keeps_going() -> None:
    calls = 0

    async def flaky(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("secret stack detail")
        if calls == 2:
            raise ShuttingDown("runner closed")
        return expected(inputs)

    observer = RecordingObserver()
    policy = BatchingPolicy(max_batch_size=4, max_queue_delay_s=600)
    batcher = DynamicBatcher("m", policy, flaky, observer)
    batcher.start()

    async def two_requests() -> list:
        pair = (batcher.submit(rows(2)), batcher.submit(rows(2)))  # 4 rows: one batch
        return await asyncio.gather(*pair, return_exceptions=True)

    first = await two_requests()
    assert all(isinstance(error, InternalError) for error in first)
    assert "secret" not in first[0].message and isinstance(first[0].__cause__, RuntimeError)
    second = await two_requests()
    for error in second:
        assert isinstance(error, ShuttingDown) and error.message == "runner closed"
    assert_outputs(await batcher.submit(rows(4)), rows(4))
    assert observer.finished == [(4, 2, False), (4, 2, False), (4, 1, True)]
    await batcher.stop(5)


async def test_output_rows_must_match_input_rows() -> None:
    async def drops_a_row(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"good": inputs["x"], "bad": inputs["x"][:-1]}

    policy = BatchingPolicy(max_batch_size=4, max_queue_delay_s=600)
    batcher = DynamicBatcher("m", policy, drops_a_row)
    batcher.start()
    pair = (batcher.submit(rows(1)), batcher.submit(rows(3)))  # 4 rows: one batch
    errors = await asyncio.gather(*pair, return_exceptions=True)
    for error in errors:
        assert isinstance(error, InternalError)
        assert "'bad'" in error.message
        assert "3 rows" in error.message and "expected 4" in error.message
    await batcher.stop(5)


# ---- lifecycle -----------------------------------------------------------------------------------


async def test_stop_refuses_new_work_and_finishes_everything_accepted() -> None:
    h = Harness(BatchingPolicy(max_batch_size=2), held=True)
    accepted = [h.submit(rows(2, 0)), h.submit(rows(1, 10)), h.submit(rows(1, 20))]
    await h.model.started.get()
    stopping = asyncio.create_task(h.batcher.stop(60))
    await h.clock.read_after(h.clock.reads)  # the scheduler has seen the stop
    with pytest.raises(ShuttingDown):
        await h.batcher.submit(rows(1))
    h.model.release()
    await stopping
    assert all(task.done() for task in accepted)  # stop() returned only after answering them
    results = await asyncio.gather(*accepted)
    for got, start, n in zip(results, (0, 10, 20), (2, 1, 1)):
        assert_outputs(got, rows(n, start))
    assert h.observer.rejections == ["shutting_down"]
    with pytest.raises(ShuttingDown):
        await h.batcher.submit(rows(1))


async def test_stop_returns_only_after_running_batches_have_answered() -> None:
    h = Harness(BatchingPolicy(max_batch_size=2), held=True)
    task = h.submit(rows(1))
    await h.model.started.get()
    finished: list[str] = []
    task.add_done_callback(lambda _: finished.append("request"))
    stopping = asyncio.create_task(h.batcher.stop(60))
    stopping.add_done_callback(lambda _: finished.append("stop"))
    await h.clock.read_after(h.clock.reads)  # the scheduler has seen the stop, queue empty
    h.model.release()
    await stopping
    await task
    assert finished == ["request", "stop"]


async def test_stop_timeout_fails_leftovers_with_shutting_down() -> None:
    loop_errors = record_loop_errors()
    h = Harness(BatchingPolicy(max_batch_size=2), held=True)  # never released
    running = h.submit(rows(2, 0))
    await h.model.started.get()
    queued = await h.submit_and_settle(rows(1, 10))
    await h.batcher.stop(0.01)
    for task in (running, queued):
        with pytest.raises(ShuttingDown):
            await task
    assert h.observer.rejections == ["shutting_down", "shutting_down"]
    assert h.batcher.queue_depth == 0
    assert loop_errors == []


async def test_submit_before_start_is_refused() -> None:
    batcher = DynamicBatcher("m", BatchingPolicy(max_batch_size=2), FakeModel())
    with pytest.raises(ModelNotReady):
        await batcher.submit(rows(1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": -1},
        {"max_batch_size": 4, "preferred_batch_sizes": (8,)},
        {"max_batch_size": 4, "max_queue_delay_s": -1},
        {"max_batch_size": 4, "priority_levels": 2, "default_priority": 0},
        {"max_batch_size": 4, "max_concurrent_batches": 0},
        {"max_batch_size": 4, "pad_axes": {"ids": (1,)}},
        {"max_batch_size": 4, "variable_output_axes": {"att": (0,)}},
    ],
)
def test_policy_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BatchingPolicy(**kwargs)
