"""Test doubles for the DynamicBatcher tests (this module holds no tests).

Ordering comes from events, never from sleeping: ``FakeModel`` holds executions until the test
releases them, and ``SignallingClock`` with ``Harness.settle`` lets a test wait until the
scheduler has looked at the queue (it must read the clock to do so).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from service.batching import BatchingPolicy, DynamicBatcher


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
    def __init__(self, stamp: Callable[[], int] = lambda: 0) -> None:
        self.depths: list[int] = []
        self.rejections: list[str] = []
        self.started: list[tuple[int, list[float]]] = []
        self.finished: list[tuple[int, int, bool]] = []
        self.finished_stamps: list[int] = []  # the stamp at each batch_finished
        self._stamp = stamp
        self._depth_waiters: list[tuple[int, asyncio.Future[int]]] = []

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)
        for wanted, waiter in self._depth_waiters:
            if wanted == depth and not waiter.done():
                waiter.set_result(self._stamp())

    async def reported_depth(self, depth: int) -> int:
        """Return at the next report of exactly ``depth`` queued requests, with the stamp
        (e.g. the clock's read count) taken at the moment of the report."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._depth_waiters.append((depth, waiter))
        return await waiter

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)

    def batch_started(self, rows: int, queue_waits_s: Sequence[float]) -> None:
        self.started.append((rows, list(queue_waits_s)))

    def batch_finished(self, rows: int, requests: int, ok: bool) -> None:
        self.finished.append((rows, requests, ok))
        self.finished_stamps.append(self._stamp())


class SignallingClock:
    """time.monotonic that counts its reads and lets a test wait for a later one."""

    def __init__(self) -> None:
        self.reads = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        self.reads += 1
        for after, waiter in self._waiters:
            if self.reads > after and not waiter.done():
                waiter.set_result(None)
        self._waiters = [(after, waiter) for after, waiter in self._waiters if not waiter.done()]
        return time.monotonic()

    async def read_after(self, count: int) -> None:
        """Return once the clock has been read more than ``count`` times in all."""
        if self.reads > count:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((count, waiter))
        await waiter


class Harness:
    """A started batcher with its fake model, observer and clock."""

    def __init__(self, policy: BatchingPolicy, *, held: bool = False) -> None:
        self.model = FakeModel(held=held)
        self.clock = SignallingClock()
        self.observer = RecordingObserver(stamp=lambda: self.clock.reads)
        self.batcher = DynamicBatcher("m", policy, self.model, self.observer, self.clock)
        self.batcher.start()

    def submit(self, inputs: Mapping[str, np.ndarray], **kwargs: object) -> asyncio.Task:
        return asyncio.create_task(self.batcher.submit(inputs, **kwargs))

    async def settle(self, depth: int) -> None:
        """Return once ``depth`` requests are queued and the scheduler has looked at them.

        Call right after submitting: the submit that makes the depth reports it, then wakes
        the scheduler, which reads the clock before deciding anything. Once the clock has
        been read after that report (no other submit is pending) and the test runs again,
        the scheduler's decision has been made.
        """
        reads_at_report = await self.observer.reported_depth(depth)
        await self.clock.read_after(reads_at_report)

    async def submit_and_settle(
        self, inputs: Mapping[str, np.ndarray], **kwargs: object
    ) -> asyncio.Task:
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


def record_loop_errors() -> list[dict]:
    """Collect whatever reaches the running loop's exception handler (e.g. an
    InvalidStateError from setting a done future); a test asserts the list stays empty."""
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    return errors
