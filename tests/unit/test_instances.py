"""InstancePool: worker threads that each own a session, and the execution timeout.

The "sessions" here are plain objects and each execution is a function the worker calls with its
session, so a test can hold an execution inside its thread for as long as it likes (an Event):
the stuck executions below are stuck until the test lets them go, whatever the machine's speed.
A real ONNX Runtime execution past its timeout is tests/reliability/test_faults.py's.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from service.errors import ExecutionTimeout, ModelNotReady
from service.runtime.instances import InstancePool

pytestmark = pytest.mark.timeout(30)  # a hang guard; no test asserts on time
GUARD_S = 20.0
TIMEOUT_S = 0.05  # executions below are either instant or held on an Event, never in between


class Session:
    def __init__(self, number: int) -> None:
        self.number = number


class Observer:
    """Records the pool's reports; ``wait_stuck(n)`` blocks until the gauge reads n."""

    def __init__(self) -> None:
        self.timeouts = 0
        self.stuck: list[int] = []
        self._changed = threading.Condition()

    def execution_timed_out(self) -> None:
        self.timeouts += 1

    def stuck_executions(self, count: int) -> None:
        with self._changed:
            self.stuck.append(count)
            self._changed.notify_all()

    async def wait_stuck(self, count: int) -> None:
        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: self.stuck and self.stuck[-1] == count, GUARD_S)

        assert await asyncio.to_thread(wait), self.stuck


def make_pool(instances: int = 1, **kwargs: Any) -> tuple[InstancePool, list[Session]]:
    opened: list[Session] = []

    def open_session() -> Session:
        opened.append(Session(instances + len(opened)))
        return opened[-1]

    pool = InstancePool(
        [Session(i) for i in range(instances)],
        execute=lambda session, work: work(session),
        open_session=open_session,
        name="m", version="3",
        **kwargs,
    )
    return pool, opened


def held(release: threading.Event, entered: threading.Event | None = None) -> Callable[[Session], int]:
    """An execution that stays in its thread until ``release`` is set."""

    def work(session: Session) -> int:
        if entered is not None:
            entered.set()
        assert release.wait(GUARD_S)
        return session.number

    return work


def number(session: Session) -> int:
    return session.number


async def test_results_and_errors_come_back_and_the_instance_serves_on() -> None:
    pool, _ = make_pool()
    try:
        assert await pool.run(number) == 0

        def fail(session: Session) -> int:
            raise ValueError("graph says no")

        with pytest.raises(ValueError, match="graph says no"):
            await pool.run(fail)
        assert await pool.run(number) == 0
    finally:
        pool.close()


async def test_threads_are_daemons_named_after_the_model() -> None:
    pool, _ = make_pool(instances=2)
    try:
        names = await asyncio.gather(pool.run(lambda s: threading.current_thread().name), pool.run(lambda s: threading.current_thread().name))
        assert all(name.startswith("ort-m_") for name in names)
        assert all(t.daemon for t in threading.enumerate() if t.name.startswith("ort-m_"))
    finally:
        pool.close()


async def test_a_stuck_execution_is_abandoned_and_a_new_instance_replaces_it() -> None:
    observer = Observer()
    pool, opened = make_pool(timeout_s=TIMEOUT_S, observer=observer)
    release = threading.Event()
    try:
        with pytest.raises(ExecutionTimeout) as info:
            await pool.run(held(release))
        assert "model 'm' version 3" in info.value.message and "0.05 s execution timeout" in info.value.message
        assert (observer.timeouts, observer.stuck, pool.stuck) == (1, [1], 1)
        # The replacement opened its own session and serves while the old thread is still held.
        assert await pool.run(number) == 1
        assert len(opened) == 1 and pool.live == 1

        release.set()  # ONNX Runtime "returns": the old instance is not needed, it ends
        await observer.wait_stuck(0)
        assert pool.stuck == 0 and pool.live == 1
        assert await pool.run(number) == 1
    finally:
        release.set()
        pool.close()


async def test_past_the_bound_the_model_refuses_until_a_stuck_execution_returns() -> None:
    """One instance, at most one stuck execution: the first is replaced, the second is not, and
    then every call is refused at once (UNAVAILABLE, naming the model) instead of queueing."""
    observer = Observer()
    pool, opened = make_pool(timeout_s=TIMEOUT_S, max_stuck=1, observer=observer)
    first, second = threading.Event(), threading.Event()
    try:
        with pytest.raises(ExecutionTimeout):
            await pool.run(held(first))
        with pytest.raises(ExecutionTimeout):
            await pool.run(held(second))
        assert len(opened) == 1 and (pool.live, pool.stuck) == (0, 2)
        with pytest.raises(ModelNotReady) as info:
            await pool.run(number)
        assert "model 'm' version 3 is not serving: 2 execution(s) are stuck" in info.value.message

        first.set()  # it comes back and takes the missing instance's place
        await observer.wait_stuck(1)
        assert (pool.live, pool.stuck) == (1, 1)
        assert await pool.run(number) == 0
        second.set()  # not needed any more: it ends
        await observer.wait_stuck(0)
        assert (pool.live, pool.stuck) == (1, 0)
        assert await pool.run(number) == 0
    finally:
        first.set()
        second.set()
        pool.close()


async def test_work_queued_when_the_last_instance_is_abandoned_is_refused_not_left() -> None:
    """Two executions given at once to one instance: the first gets stuck, and with no
    replacement allowed (max_stuck=0) the second, never started, is failed right away."""
    pool, _ = make_pool(timeout_s=TIMEOUT_S, max_stuck=0)
    release = threading.Event()
    try:
        stuck, queued = await asyncio.gather(pool.run(held(release)), pool.run(number), return_exceptions=True)
        assert isinstance(stuck, ExecutionTimeout)
        assert isinstance(queued, ModelNotReady)
    finally:
        release.set()
        pool.close()


async def test_the_clock_starts_when_an_instance_takes_the_execution() -> None:
    """Waiting for a busy instance is not execution time: an execution queued behind a held one
    (no timeout of its own yet) is not abandoned, only the held one is."""
    pool, _ = make_pool(timeout_s=TIMEOUT_S)
    release, entered = threading.Event(), threading.Event()
    try:
        first = asyncio.create_task(pool.run(held(release, entered)))
        assert await asyncio.to_thread(entered.wait, GUARD_S)
        second = asyncio.create_task(pool.run(number))
        with pytest.raises(ExecutionTimeout):
            await first
        assert await second == 1  # run by the replacement, started after it opened
    finally:
        release.set()
        pool.close()


async def test_a_caller_that_goes_away_leaves_its_queued_execution_unrun() -> None:
    pool, _ = make_pool()
    release, entered = threading.Event(), threading.Event()
    ran: list[int] = []
    try:
        busy = asyncio.create_task(pool.run(held(release, entered)))
        assert await asyncio.to_thread(entered.wait, GUARD_S)
        waiting = asyncio.create_task(pool.run(lambda s: ran.append(1)))
        await asyncio.sleep(0)  # let it queue (ordering only: nothing waits on time)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        assert await busy == 0
        assert await pool.run(number) == 0
        assert ran == []
    finally:
        release.set()
        pool.close()


async def test_close_does_not_wait_for_an_abandoned_execution() -> None:
    observer = Observer()
    pool, _ = make_pool(timeout_s=TIMEOUT_S, observer=observer)
    release = threading.Event()
    try:
        with pytest.raises(ExecutionTimeout):
            await pool.run(held(release))
        await asyncio.to_thread(pool.close)  # returns although one thread is still held
        with pytest.raises(ModelNotReady, match="unloading"):
            await pool.run(number)
        release.set()
        await observer.wait_stuck(0)  # the held thread ends once it returns, and is not reused
        with pytest.raises(ModelNotReady, match="unloading"):
            await pool.run(number)
    finally:
        release.set()
        pool.close()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        InstancePool([], execute=lambda s, w: None, open_session=object, name="m")
    with pytest.raises(ValueError):
        InstancePool([Session(0)], execute=lambda s, w: None, open_session=object, name="m", timeout_s=0)
