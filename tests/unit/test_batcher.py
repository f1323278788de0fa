"""DynamicBatcher: rows, dispatch rule, concurrency, queue bound, cancellation, deadlines,
priorities and shutdown, driven through the public interface with a controllable execute.

Ordering comes from events, never from sleeping: ``FakeModel`` holds executions until the test
releases them, and ``SignallingClock`` lets a test wait until the scheduler has looked at the
queue (it must read the clock to do so). Deadline tests let a real short timeout pass and only
check the outcome, never how long it took. The timeout mark below is a hang guard.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from service.batching import BatchingPolicy, DynamicBatcher
from service.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    ModelNotReady,
    QueueFull,
    ShuttingDown,
)

pytestmark = pytest.mark.timeout(20)

# ---- test doubles ------------------------------------------------------------------------------


class FakeModel:
    """An execute function that records every batch and can hold executions until released.

    Outputs are ``<input>_out = 2 * input + 1`` so each caller's rows are checkable.
    """

    def __init__(self, *, held: bool = False) -> None:
        self.batches: list[dict[str, np.ndarray]] = []
        self.started: asyncio.Queue[dict[str, np.ndarray]] = asyncio.Queue()
        self._release = asyncio.Event()
        if not held:
            self._release.set()

    def hold(self) -> None:
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    @property
    def batch_rows(self) -> list[int]:
        return [next(iter(batch.values())).shape[0] for batch in self.batches]

    async def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(inputs)
        self.started.put_nowait(inputs)
        await self._release.wait()
        return {f"{name}_out": value * 2 + 1 for name, value in inputs.items()}


class RecordingObserver:
    def __init__(self) -> None:
        self.depths: list[int] = []
        self.rejections: list[str] = []
        self.started: list[tuple[int, list[float]]] = []
        self.finished: list[tuple[int, int, bool]] = []
        self._depth_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)
        for wanted, waiter in self._depth_waiters:
            if wanted == depth and not waiter.done():
                waiter.set_result(None)

    async def reported_depth(self, depth: int) -> None:
        """Return at the next report of exactly ``depth`` queued requests."""
        waiter = asyncio.get_running_loop().create_future()
        self._depth_waiters.append((depth, waiter))
        await waiter

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)

    def batch_started(self, rows: int, queue_waits_s: Sequence[float]) -> None:
        self.started.append((rows, list(queue_waits_s)))

    def batch_finished(self, rows: int, requests: int, ok: bool) -> None:
        self.finished.append((rows, requests, ok))


class SignallingClock:
    """time.monotonic, plus a way to wait for the next time someone reads it."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def __call__(self) -> float:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        return time.monotonic()

    async def next_read(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter


class Harness:
    """A started batcher with its fake model, observer and clock."""

    def __init__(self, policy: BatchingPolicy, *, held: bool = False) -> None:
        self.model = FakeModel(held=held)
        self.observer = RecordingObserver()
        self.clock = SignallingClock()
        self.batcher = DynamicBatcher("m", policy, self.model, self.observer, self.clock)
        self.batcher.start()

    def submit(self, inputs: Mapping[str, np.ndarray], **kwargs: object) -> asyncio.Task:
        return asyncio.create_task(self.batcher.submit(inputs, **kwargs))

    async def settle(self, depth: int) -> None:
        """Return once ``depth`` requests are queued and the scheduler has looked at them.

        Call right after submitting: the last submit reports the depth, then wakes the
        scheduler, which reads the clock before deciding anything; when that read has
        happened and the test runs again, the decision has been made.
        """
        await self.observer.reported_depth(depth)
        await self.clock.next_read()

    async def submit_and_settle(self, inputs: Mapping[str, np.ndarray], **kwargs: object) -> asyncio.Task:
        task = self.submit(inputs, **kwargs)
        await self.settle(self.batcher.queue_depth + 1)
        return task


def rows(n: int, start: float = 0.0, width: int = 2) -> dict[str, np.ndarray]:
    """n rows of distinct values so every row can be traced through a batch."""
    return {"x": (start + np.arange(n * width, dtype=np.float32)).reshape(n, width)}


def expected(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{name}_out": value * 2 + 1 for name, value in inputs.items()}


def assert_outputs(got: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]) -> None:
    want = expected(inputs)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.fixture
async def no_loop_errors():
    """Fails the test if anything reaches the loop's exception handler (e.g. InvalidStateError)."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(None)
    assert errors == []


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


async def test_waits_for_more_rows_within_the_delay_and_dispatches_a_full_batch_at_once() -> None:
    h = Harness(BatchingPolicy(max_batch_size=4, max_queue_delay_s=600))
    a = await h.submit_and_settle(rows(1, 0))
    assert h.observer.started == []  # 1 of 4 rows and the delay has not passed: it waits
    b = h.submit(rows(3, 10))
    await asyncio.gather(a, b)  # 4 rows = max_batch_size: no waiting for the delay
    assert h.model.batch_rows == [4]
    await h.batcher.stop(5)


async def test_preferred_batch_size_dispatches_at_once() -> None:
    h = Harness(BatchingPolicy(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_s=600))
    a = await h.submit_and_settle(rows(2, 0))
    assert h.observer.started == []
    b = h.submit(rows(2, 10))
    await asyncio.gather(a, b)
    assert h.model.batch_rows == [4]
    await h.batcher.stop(5)


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


async def test_cancelled_inside_a_running_batch_does_not_hurt_its_batch_mates(no_loop_errors) -> None:
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
    batcher = DynamicBatcher("m", BatchingPolicy(max_batch_size=4, max_queue_delay_s=600), flaky, observer)
    batcher.start()
    first = await asyncio.gather(*(batcher.submit(rows(2)) for _ in range(2)), return_exceptions=True)
    assert all(isinstance(error, InternalError) for error in first)
    assert "secret" not in first[0].message and isinstance(first[0].__cause__, RuntimeError)
    second = await asyncio.gather(*(batcher.submit(rows(2)) for _ in range(2)), return_exceptions=True)
    assert all(isinstance(error, ShuttingDown) and error.message == "runner closed" for error in second)
    assert_outputs(await batcher.submit(rows(4)), rows(4))
    assert observer.finished == [(4, 2, False), (4, 2, False), (4, 1, True)]
    await batcher.stop(5)


async def test_output_rows_must_match_input_rows() -> None:
    async def drops_a_row(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"good": inputs["x"], "bad": inputs["x"][:-1]}

    batcher = DynamicBatcher("m", BatchingPolicy(max_batch_size=4, max_queue_delay_s=600), drops_a_row)
    batcher.start()
    errors = await asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(3)), return_exceptions=True)
    for error in errors:
        assert isinstance(error, InternalError)
        assert "'bad'" in error.message and "3 rows" in error.message and "expected 4" in error.message
    await batcher.stop(5)


# ---- lifecycle -----------------------------------------------------------------------------------


async def test_stop_refuses_new_work_and_finishes_everything_accepted() -> None:
    h = Harness(BatchingPolicy(max_batch_size=2), held=True)
    accepted = [h.submit(rows(2, 0)), h.submit(rows(1, 10)), h.submit(rows(1, 20))]
    await h.model.started.get()
    stopping = asyncio.create_task(h.batcher.stop(60))
    await h.clock.next_read()  # the scheduler has seen the stop
    with pytest.raises(ShuttingDown):
        await h.batcher.submit(rows(1))
    h.model.release()
    await stopping
    results = await asyncio.gather(*accepted)
    for got, start, n in zip(results, (0, 10, 20), (2, 1, 1)):
        assert_outputs(got, rows(n, start))
    assert h.observer.rejections == ["shutting_down"]
    with pytest.raises(ShuttingDown):
        await h.batcher.submit(rows(1))


async def test_stop_timeout_fails_leftovers_with_shutting_down(no_loop_errors) -> None:
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
