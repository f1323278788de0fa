"""DynamicBatcher: rows, the dispatch rule (full, preferred, delay), concurrent executions
and what the observer sees, driven through the public interface with a controllable execute."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import BatchingPolicy
from service.errors import InvalidInput
from tests.unit.test_batcher_fakes import Harness, assert_outputs, rows

pytestmark = pytest.mark.timeout(20)  # a hang guard; no test asserts on time


# ---- rows and the dispatch rule ----------------------------------------------------------------


async def test_capacity_is_counted_in_rows_and_never_exceeds_max() -> None:
    h = Harness(BatchingPolicy(max_batch_size=4), held=True)
    first = h.submit(rows(1, 0))
    await h.model.started.get()  # one-row batch holds the only execution slot
    a, b, c = rows(3, 100), rows(2, 200), rows(1, 300)
    tasks = [h.submit(a), h.submit(b), h.submit(c)]
    h.model.release()
    results = await asyncio.gather(first, *tasks)
    # 3 + 2 > 4: the 2-row request waits for the next batch rather than being overtaken.
    assert h.model.batch_rows == [1, 3, 3]
    for got, inputs in zip(results[1:], (a, b, c)):
        assert_outputs(got, inputs)
    await h.batcher.stop(5)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (rows(5), "exceeds the model's max_batch_size 4"),
        (rows(0), "batch size of 0"),
        ({"x": np.zeros((2, 3)), "y": np.zeros((3, 3))}, "disagree on the batch size"),
        ({"x": np.zeros((), dtype=np.float32)}, "no batch dimension"),
        ({}, "no inputs"),
    ],
)
async def test_unbatchable_requests_are_invalid_input(inputs: dict, message: str) -> None:
    h = Harness(BatchingPolicy(max_batch_size=4))
    with pytest.raises(InvalidInput, match=message):
        await h.batcher.submit(inputs)
    assert h.batcher.queue_depth == 0
    await h.batcher.stop(5)


# Triton's delay rule on its own: dispatch_when_idle off, so a lone first request waits too.
async def test_waits_for_more_rows_within_the_delay_and_dispatches_a_full_batch_at_once() -> None:
    h = Harness(BatchingPolicy(max_batch_size=4, max_queue_delay_s=600, dispatch_when_idle=False))
    a = await h.submit_and_settle(rows(1, 0))
    assert h.observer.started == []  # 1 of 4 rows and the delay has not passed: it waits
    b = h.submit(rows(3, 10))
    await asyncio.gather(a, b)  # 4 rows = max_batch_size: no waiting for the delay
    assert h.model.batch_rows == [4]
    await h.batcher.stop(5)


async def test_preferred_batch_size_dispatches_at_once() -> None:
    policy = BatchingPolicy(
        max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_s=600, dispatch_when_idle=False
    )
    h = Harness(policy)
    a = await h.submit_and_settle(rows(2, 0))
    assert h.observer.started == []
    b = h.submit(rows(2, 10))
    await asyncio.gather(a, b)
    assert h.model.batch_rows == [4]
    await h.batcher.stop(5)


async def test_a_lone_request_to_an_idle_batcher_runs_without_waiting_for_the_delay() -> None:
    h = Harness(BatchingPolicy(max_batch_size=4, max_queue_delay_s=600))
    a = rows(1, 0)
    # The timeout only turns a wait for the 600 s delay into a failure instead of a hang.
    assert_outputs(await asyncio.wait_for(h.submit(a), 10), a)
    assert h.model.batch_rows == [1]
    await h.batcher.stop(5)


async def test_a_caller_submitting_again_the_moment_it_is_answered_runs_without_waiting() -> None:
    # An in-process closed loop: the next submit comes before any other callback runs, so it
    # would see its own finished execution as still running if the batcher forgot it late.
    h = Harness(BatchingPolicy(max_batch_size=4, max_queue_delay_s=600))
    for i in range(3):
        a = rows(1, 10 * i)
        # Awaited in this task (not a new one), as a servicer does; the timeout only turns a
        # wait for the 600 s delay into a failure instead of a hang.
        async with asyncio.timeout(10):
            assert_outputs(await h.batcher.submit(a), a)
    assert h.model.batch_rows == [1, 1, 1]
    await h.batcher.stop(5)


async def test_a_request_that_arrived_while_another_ran_still_waits_for_the_delay() -> None:
    h = Harness(BatchingPolicy(max_batch_size=4, max_queue_delay_s=600), held=True)
    first = h.submit(rows(1, 0))  # idle batcher: runs at once, then held
    await h.model.started.get()
    second = h.submit(rows(1, 10))  # arrives while the first executes
    await h.settle(1)
    h.model.release()
    await first
    # The scheduler looks again once the first batch has finished (it reads the clock to).
    await h.clock.read_after(h.observer.finished_stamps[0])
    # Alone in the queue with nothing executing now, but it did not arrive to an idle
    # batcher: other traffic is in flight, so Triton's delay rule applies. stop() drains it.
    assert len(h.observer.started) == 1  # batch_started is reported as a batch is launched
    await h.batcher.stop(5)
    await second
    assert h.model.batch_rows == [1, 1]


async def test_after_a_batch_of_several_a_lone_arrival_waits_for_its_batch_mates() -> None:
    h = Harness(BatchingPolicy(max_batch_size=4, max_queue_delay_s=600))
    await asyncio.gather(h.submit(rows(2, 0)), h.submit(rows(2, 10)))  # one full batch of two
    assert len(h.observer.started) == 1
    # A burst was just answered: its callers are about to come back, so the first of them
    # waits for the others rather than running alone.
    late = await h.submit_and_settle(rows(1, 20))
    assert len(h.observer.started) == 1
    await h.batcher.stop(5)
    await late
    assert h.model.batch_rows == [4, 1]


async def test_largest_preferred_prefix_goes_first() -> None:
    policy = BatchingPolicy(max_batch_size=8, preferred_batch_sizes=(2, 4), max_queue_delay_s=600)
    h = Harness(policy, held=True)
    blocker = h.submit(rows(8))  # full batch: dispatched at once, then held
    await h.model.started.get()
    singles = [h.submit(rows(1, 10 * i)) for i in range(5)]
    await h.settle(5)  # all five queued behind the busy slot
    h.model.release()
    await asyncio.gather(blocker, *singles[:4])
    # 5 rows queued: prefixes 2 and 4 are preferred; 4 is the largest. The fifth waits for
    # the delay; stop() drains it without waiting.
    assert h.model.batch_rows[:2] == [8, 4]
    await h.batcher.stop(5)
    await singles[4]
    assert h.model.batch_rows == [8, 4, 1]


async def test_after_the_delay_the_largest_available_batch_goes_without_further_events() -> None:
    h = Harness(BatchingPolicy(max_batch_size=8, max_queue_delay_s=0.02))
    a, b = rows(1, 0), rows(2, 10)
    results = await asyncio.gather(h.submit(a), h.submit(b))
    assert h.model.batch_rows == [3]
    assert_outputs(results[0], a)
    assert_outputs(results[1], b)
    await h.batcher.stop(5)


async def test_zero_delay_dispatches_whatever_is_queued() -> None:
    h = Harness(BatchingPolicy(max_batch_size=8))
    a = await h.submit_and_settle(rows(1))
    assert [rows for rows, _ in h.observer.started] == [1]
    assert_outputs(await a, rows(1))
    await h.batcher.stop(5)


async def test_requests_accumulate_while_every_slot_is_busy() -> None:
    h = Harness(BatchingPolicy(max_batch_size=8, max_concurrent_batches=2), held=True)
    first, second = h.submit(rows(8, 0)), h.submit(rows(8, 100))
    await h.model.started.get()
    await h.model.started.get()  # two executions in flight at once
    third = await h.submit_and_settle(rows(1, 200))
    fourth = await h.submit_and_settle(rows(2, 300))
    assert h.model.batch_rows == [8, 8]  # no third execution while both slots are busy
    h.model.release()
    await asyncio.gather(first, second, third, fourth)
    assert h.model.batch_rows == [8, 8, 3]
    await h.batcher.stop(5)


async def test_observer_sees_batches_and_queue_waits() -> None:
    h = Harness(BatchingPolicy(max_batch_size=4, max_queue_delay_s=600))
    await asyncio.gather(h.submit(rows(1)), h.submit(rows(3)))
    assert [(n, len(waits)) for n, waits in h.observer.started] == [(4, 2)]
    assert all(wait >= 0 for wait in h.observer.started[0][1])
    assert h.observer.finished == [(4, 2, True)]
    assert h.observer.depths[-1] == 0 and max(h.observer.depths) == 2
    await h.batcher.stop(5)

