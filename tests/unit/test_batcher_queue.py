"""DynamicBatcher: the queue bound, cancellation, deadlines and queue timeouts, priorities.

Deadline tests let a real short timeout pass while the model is held and check only the
outcome (the request expired with nothing else happening), never how long it took."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.batching import BatchingPolicy
from service.errors import DeadlineExceeded, InvalidInput, QueueFull
from tests.unit.test_batcher_fakes import Harness, assert_outputs, record_loop_errors, rows

pytestmark = pytest.mark.timeout(20)  # a hang guard; no test asserts on time


# ---- bounded queue -------------------------------------------------------------------------------


async def test_full_queue_fails_fast_and_does_not_block() -> None:
    h = Harness(BatchingPolicy(max_batch_size=1, max_queue_size=2), held=True)
    running = h.submit(rows(1, 0))
    await h.model.started.get()  # the running request no longer counts as queued
    queued = [h.submit(rows(1, 10)), h.submit(rows(1, 20))]
    await h.settle(2)
    # Raises while the model is still held: submit did not wait for room.
    with pytest.raises(QueueFull):
        await h.batcher.submit(rows(1, 30))
    assert h.observer.rejections == ["queue_full"]
    h.model.release()
    await asyncio.gather(running, *queued)
    await h.batcher.stop(5)


# ---- cancellation --------------------------------------------------------------------------------


async def test_cancelled_while_queued_leaves_the_queue_and_is_never_computed() -> None:
    h = Harness(BatchingPolicy(max_batch_size=4), held=True)
    running = h.submit(rows(4, 0))
    await h.model.started.get()
    doomed = await h.submit_and_settle(rows(1, 999))
    assert h.batcher.queue_depth == 1
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert h.batcher.queue_depth == 0
    assert h.observer.rejections == ["cancelled"]
    h.model.release()
    later = rows(1, 50)
    assert_outputs(await h.submit(later), later)
    await running
    computed = np.concatenate([batch["x"] for batch in h.model.batches])
    assert 999 not in computed
    await h.batcher.stop(5)


async def test_cancelled_inside_a_running_batch_does_not_hurt_its_batch_mates() -> None:
    loop_errors = record_loop_errors()
    h = Harness(BatchingPolicy(max_batch_size=4, max_queue_delay_s=600), held=True)
    a, b = rows(2, 0), rows(2, 100)
    task_a, task_b = h.submit(a), h.submit(b)
    await h.model.started.get()  # both are in the held execution
    task_a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task_a
    h.model.release()
    assert_outputs(await task_b, b)
    assert h.model.batch_rows == [4]
    assert h.observer.finished == [(4, 2, True)]
    assert h.observer.rejections == []  # already computing: not a queue rejection
    await h.batcher.stop(5)
    assert loop_errors == []


async def test_mass_cancellation_keeps_the_survivors_in_order() -> None:
    # Enough cancellations (with deadlines queued) for the queue to compact its garbage.
    policy = BatchingPolicy(max_batch_size=3, priority_levels=2, default_priority=2)
    h = Harness(policy, held=True)
    running = h.submit(rows(3, 0))
    await h.model.started.get()
    tasks = [
        h.submit(rows(1, 10 * i), priority=1 + i % 2, timeout_s=3600) for i in range(1, 121)
    ]
    await h.settle(120)
    survivors = {i for i in range(1, 121) if i % 11 == 0}
    cancelled = [task for i, task in enumerate(tasks, 1) if i not in survivors]
    for task in cancelled:
        task.cancel()
    await asyncio.gather(*cancelled, return_exceptions=True)
    assert h.batcher.queue_depth == len(survivors)
    h.model.release()
    await running
    results = await asyncio.gather(*(tasks[i - 1] for i in sorted(survivors)))
    for i, got in zip(sorted(survivors), results):
        assert_outputs(got, rows(1, 10 * i))
    computed = [int(v) // 10 for batch in h.model.batches[1:] for v in batch["x"][:, 0]]
    # Priority 1 (even i) first, then priority 2, arrival order within each.
    assert computed == sorted(survivors, key=lambda i: (i % 2 == 1, i))
    await h.batcher.stop(5)


async def test_cancelled_before_the_scheduler_runs_is_not_computed() -> None:
    h = Harness(BatchingPolicy(max_batch_size=4))
    task = h.submit(rows(1, 999))
    await h.observer.reported_depth(1)  # queued; the scheduler is woken but has not run yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    other = rows(1, 5)
    assert_outputs(await h.submit(other), other)
    assert all(999 not in batch["x"] for batch in h.model.batches)
    await h.batcher.stop(5)


# ---- deadlines and queue timeouts ----------------------------------------------------------------


async def _expires_while_model_is_held(policy: BatchingPolicy, **submit_kwargs: object) -> Harness:
    """Submit behind a held execution; the request must time out with nothing else happening."""
    h = Harness(policy, held=True)
    running = h.submit(rows(policy.max_batch_size, 0))
    await h.model.started.get()
    with pytest.raises(DeadlineExceeded):
        await h.submit(rows(1, 999), **submit_kwargs)
    assert h.observer.rejections == ["deadline"]
    assert h.batcher.queue_depth == 0
    h.model.release()
    await running
    assert all(999 not in batch["x"] for batch in h.model.batches)
    await h.batcher.stop(5)
    return h


async def test_absolute_deadline_expires_a_queued_request() -> None:
    await _expires_while_model_is_held(
        BatchingPolicy(max_batch_size=2), deadline=time.monotonic() + 0.02
    )


async def test_request_timeout_expires_a_queued_request() -> None:
    await _expires_while_model_is_held(BatchingPolicy(max_batch_size=2), timeout_s=0.02)


async def test_default_timeout_applies_when_the_request_sets_none() -> None:
    await _expires_while_model_is_held(BatchingPolicy(max_batch_size=2, default_timeout_s=0.02))


async def test_timeout_override_is_ignored_when_not_allowed() -> None:
    policy = BatchingPolicy(max_batch_size=2, default_timeout_s=0.02, allow_timeout_override=False)
    await _expires_while_model_is_held(policy, timeout_s=3600)


async def test_earlier_of_deadline_and_timeout_wins() -> None:
    policy = BatchingPolicy(max_batch_size=2, default_timeout_s=3600)
    await _expires_while_model_is_held(policy, deadline=time.monotonic() + 3600, timeout_s=0.02)
    await _expires_while_model_is_held(policy, deadline=time.monotonic() + 0.02, timeout_s=3600)


async def test_deadline_already_passed_is_refused_at_submit() -> None:
    h = Harness(BatchingPolicy(max_batch_size=2))
    with pytest.raises(DeadlineExceeded):
        await h.batcher.submit(rows(1), deadline=time.monotonic() - 1)
    assert h.observer.rejections == ["deadline"]
    assert h.model.batches == []
    await h.batcher.stop(5)


async def test_negative_timeout_is_invalid() -> None:
    h = Harness(BatchingPolicy(max_batch_size=2))
    with pytest.raises(InvalidInput):
        await h.batcher.submit(rows(1), timeout_s=-1)
    await h.batcher.stop(5)


# ---- priorities ----------------------------------------------------------------------------------


async def test_higher_priority_runs_first_and_fifo_within_a_level() -> None:
    policy = BatchingPolicy(max_batch_size=1, priority_levels=3, default_priority=2)
    h = Harness(policy, held=True)
    running = h.submit(rows(1, 0))
    await h.model.started.get()
    order = [(3, 30.0), (None, 20.0), (1, 10.0), (2, 21.0), (0, 22.0), (1, 11.0)]
    tasks = [h.submit(rows(1, start), priority=level) for level, start in order]
    h.model.release()
    await asyncio.gather(running, *tasks)
    firsts = [float(batch["x"][0, 0]) for batch in h.model.batches[1:]]
    # 1 before 2 before 3; None and 0 mean the default level (2); arrival order within a level.
    assert firsts == [10.0, 11.0, 20.0, 21.0, 22.0, 30.0]
    await h.batcher.stop(5)


async def test_high_priority_requests_fill_the_batch_before_low_ones() -> None:
    policy = BatchingPolicy(max_batch_size=2, priority_levels=2, default_priority=2)
    h = Harness(policy, held=True)
    running = h.submit(rows(2, 0))
    await h.model.started.get()
    tasks = [
        h.submit(rows(1, 50), priority=2),
        h.submit(rows(1, 10), priority=1),
        h.submit(rows(1, 11), priority=1),
    ]
    h.model.release()
    await asyncio.gather(running, *tasks)
    assert h.model.batches[1]["x"][:, 0].tolist() == [10.0, 11.0]
    assert h.model.batches[2]["x"][:, 0].tolist() == [50.0]
    await h.batcher.stop(5)


@pytest.mark.parametrize("priority", [-1, 3])
async def test_priority_outside_the_levels_is_invalid(priority: int) -> None:
    h = Harness(BatchingPolicy(max_batch_size=2, priority_levels=2, default_priority=1))
    with pytest.raises(InvalidInput, match="priority"):
        await h.batcher.submit(rows(1), priority=priority)
    await h.batcher.stop(5)

