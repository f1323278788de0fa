"""PreciseTimer: callbacks on the loop's thread, in deadline order, never early, never after
cancel or close."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batching.timer import PreciseTimer


async def test_callbacks_run_on_the_loop_thread_in_deadline_order_and_never_early() -> None:
    loop = asyncio.get_running_loop()
    timer = PreciseTimer(loop)
    fired: list[tuple[str, float, float, threading.Thread]] = []
    done = loop.create_future()

    def callback(name: str, when: float) -> None:
        fired.append((name, when, time.monotonic(), threading.current_thread()))
        if len(fired) == 3:
            done.set_result(None)

    start = time.monotonic()
    for name, delay in (("third", 0.006), ("first", 0.002), ("second", 0.004)):
        timer.call_later(delay, lambda n=name, w=start + delay: callback(n, w))
    await asyncio.wait_for(done, 10)  # a failure guard, not a timing assertion
    timer.close()
    assert [name for name, *_ in fired] == ["first", "second", "third"]
    assert all(ran >= due for _, due, ran, _ in fired)
    assert {thread for *_, thread in fired} == {threading.current_thread()}


async def test_a_cancelled_callback_never_runs() -> None:
    loop = asyncio.get_running_loop()
    timer = PreciseTimer(loop)
    ran: list[str] = []
    later = loop.create_future()
    cancelled = timer.call_later(0.001, lambda: ran.append("cancelled"))
    timer.cancel(cancelled)
    timer.call_later(0.003, lambda: later.set_result(None))
    await asyncio.wait_for(later, 10)
    timer.close()
    assert ran == []


async def test_close_stops_the_thread_and_drops_pending_callbacks() -> None:
    loop = asyncio.get_running_loop()
    timer = PreciseTimer(loop, name="t-close")
    ran: list[str] = []
    timer.call_later(3600, lambda: ran.append("never"))
    timer.close()
    assert not any(t.name == "t-close" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        timer.call_later(0, lambda: None)
    timer.close()  # idempotent
    assert ran == []


async def test_many_cancelled_timers_do_not_pile_up() -> None:
    timer = PreciseTimer(asyncio.get_running_loop())
    for _ in range(1000):  # the batcher cancels one per early wake-up
        timer.cancel(timer.call_later(3600, lambda: None))
    assert len(timer._heap) < 300
    timer.close()
