"""PreciseTimer: run callbacks on an event loop at sub-millisecond times.

asyncio's own timers wait in ``epoll_wait``, whose timeout has a resolution of one
millisecond and is rounded up, so ``loop.call_later(0.0005, ...)`` fires after 1 ms or more.
For the batcher that turned ``max_queue_delay_microseconds: 500`` into 1.0–1.5 ms of waiting
(bench/results/before_after/). Here one thread sleeps on a condition variable until the
earliest deadline (``pthread_cond_timedwait``: microsecond resolution) and hands each due
callback to the loop with ``call_soon_threadsafe``, which wakes ``epoll_wait`` at once.

Callbacks always run on the loop's thread, never on the timer's.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable

_COMPACT_AT = 256  # cancelled entries tolerated in the heap before it is rebuilt


class TimerHandle:
    __slots__ = ("when", "callback", "cancelled", "in_heap")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self.in_heap = True  # guarded by the timer's condition


class PreciseTimer:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "precise-timer") -> None:
        self._loop = loop
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._order = itertools.count()  # ties keep call order; handles are never compared
        self._cancelled = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback()`` on the loop ``delay`` seconds from now (time.monotonic)."""
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback)
        with self._condition:
            if self._closed:
                raise RuntimeError("timer is closed")
            heapq.heappush(self._heap, (handle.when, next(self._order), handle))
            if self._heap[0][2] is handle:  # a new earliest deadline: the thread sleeps too long
                self._condition.notify()
        return handle

    def cancel(self, handle: TimerHandle) -> None:
        """The callback will not run (if it is already on its way to the loop, it is skipped)."""
        if handle.cancelled:
            return
        handle.cancelled = True
        with self._condition:
            if not handle.in_heap:  # already fired (the usual case) or dropped by close()
                return
            self._cancelled += 1
            if self._cancelled > _COMPACT_AT and self._cancelled > len(self._heap) // 2:
                for entry in self._heap:
                    entry[2].in_heap = not entry[2].cancelled
                self._heap = [entry for entry in self._heap if entry[2].in_heap]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def close(self) -> None:
        """Stop the thread; pending callbacks never run. Idempotent."""
        with self._condition:
            self._closed = True
            for entry in self._heap:
                entry[2].in_heap = False
            self._heap.clear()
            self._condition.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._condition:
            while not self._closed:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)[2].in_heap = False
                    self._cancelled -= 1
                if not self._heap:
                    self._condition.wait()
                    continue
                remaining = self._heap[0][0] - time.monotonic()
                if remaining > 0:
                    self._condition.wait(remaining)
                    continue
                _, _, handle = heapq.heappop(self._heap)
                handle.in_heap = False
                try:
                    self._loop.call_soon_threadsafe(self._fire, handle)
                except RuntimeError:  # the loop is closed: nobody is left to call back
                    self._closed = True

    @staticmethod
    def _fire(handle: TimerHandle) -> None:
        if not handle.cancelled:
            handle.callback()
