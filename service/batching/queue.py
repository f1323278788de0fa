"""The queued requests of one model: one FIFO per priority level plus a deadline heap.

Removal is lazy (a request is marked and skipped) so that cancelling or expiring a request in
the middle of a long queue costs O(1); dead entries are dropped from the heads at once and the
whole structure is rebuilt when they outnumber the live ones, so memory stays proportional to
what is really queued (a dead entry still holds its request's tensors).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator

from service.batching.request import Pending

_COMPACT_SLACK = 32  # rebuild only when there is this much garbage, to amortise the cost


class PendingQueue:
    def __init__(self, levels: int) -> None:
        self._levels: list[deque[Pending]] = [deque() for _ in range(max(1, levels))]
        self._deadlines: list[tuple[float, int, Pending]] = []
        self._seq = itertools.count()  # breaks deadline ties so Pending is never compared
        self._live = 0
        self._dead = 0  # removed requests still sitting inside a level deque

    def __len__(self) -> int:
        return self._live

    def push(self, item: Pending) -> None:
        self._levels[item.level].append(item)
        if item.deadline is not None:
            heapq.heappush(self._deadlines, (item.deadline, next(self._seq), item))
        self._live += 1

    def remove(self, item: Pending) -> bool:
        """Take one request out of the queue; False when it had already left."""
        if not item.queued:
            return False
        item.queued = False
        self._live -= 1
        self._dead += 1
        level = self._levels[item.level]
        # Keep the invariant that every level's head is live, so first() is O(levels).
        while level and not level[0].queued:
            level.popleft()
            self._dead -= 1
        self._compact_if_sparse()
        return True

    def __iter__(self) -> Iterator[Pending]:
        """Queued requests, highest priority first, oldest first within a level.

        Never mutates the deques, so callers may stop early; they must not remove while
        iterating (collect first, then remove).
        """
        for level in self._levels:
            for item in level:
                if item.queued:
                    yield item

    def first(self) -> Pending | None:
        """The request the next batch is built around: highest priority, then oldest."""
        for level in self._levels:
            if level:
                return level[0]
        return None

    def oldest_enqueued_at(self) -> float | None:
        """When the oldest queued request (any level) arrived; the batching delay runs from it."""
        return min((level[0].enqueued_at for level in self._levels if level), default=None)

    def pop_expired(self, now: float) -> list[Pending]:
        """Remove and return every queued request whose deadline is at or before ``now``."""
        expired: list[Pending] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, item = heapq.heappop(self._deadlines)
            if self.remove(item):
                expired.append(item)
        return expired

    def next_deadline(self) -> float | None:
        """The earliest deadline among queued requests, or None."""
        while self._deadlines and not self._deadlines[0][2].queued:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def remove_all(self) -> list[Pending]:
        """Empty the queue (shutdown abort); returns what was queued, in priority order."""
        items = list(self)
        for item in items:
            self.remove(item)
        return items

    def _compact_if_sparse(self) -> None:
        # New deque objects rather than in-place edits: an abandoned __iter__ generator may
        # still reference the old ones.
        if self._dead > self._live + _COMPACT_SLACK:
            self._levels = [deque(item for item in level if item.queued) for level in self._levels]
            self._dead = 0
        # Heap entries of requests that left before their deadline.
        if len(self._deadlines) > 2 * self._live + _COMPACT_SLACK:
            self._deadlines = [entry for entry in self._deadlines if entry[2].queued]
            heapq.heapify(self._deadlines)
