"""Which queued requests run next, and when to look again (Triton's dynamic batching rule).

A pure function of the queue, the policy and the time, so the rule can be read (and tested) in
one place:

1. The batch is built around the first queued request (highest priority, then oldest) and takes
   only requests of the same shape group, in queue order, while their rows fit in
   ``max_batch_size``. It stops at the first same-group request that does not fit, so nothing
   overtakes a request that is waiting for room.
   With ``max_padding_ratio`` set (padded inputs), a request whose length would push the
   batch's padding past that bound is passed over, not a stop: it waits for a batch of
   requests nearer its own length, and it heads one once it is the oldest.
2. A full batch (``max_batch_size`` rows) goes at once; so does the largest prefix whose rows
   are one of ``preferred_batch_sizes``.
3. A lone request that arrived to an idle batcher (nothing queued, nothing executing, and the
   previous execution held one request) goes at once when nothing is executing now either
   (``dispatch_when_idle``, an attnserve addition to Triton's rule): no other request is in
   the server to join it, so the delay below could only add latency. A closed-loop client with
   one request in flight never waits; under load the batcher is never idle, and after a batch
   of several the next arrival waits for its batch-mates, so this rule does not fire.
4. Otherwise the batch waits until ``max_queue_delay_s`` has passed since the oldest queued
   request arrived (or the batcher is draining), then goes with whatever it has.
"""

from __future__ import annotations

from service.batching.policy import BatchingPolicy
from service.batching.queue import PendingQueue
from service.batching.request import Pending


def next_batch(
    queue: PendingQueue, policy: BatchingPolicy, now: float, *, draining: bool, idle: bool = False
) -> tuple[list[Pending], float | None]:
    """Return (requests to execute now, None) or ([], the time the batch becomes due).

    ``idle``: no execution of this model is in flight (rule 3).
    """
    # A cancelled caller's request is still queued until its own task runs its cleanup; it
    # must never be computed, so it is invisible here.
    candidates = (item for item in queue if not item.future.done())
    head = next(candidates, None)
    if head is None:
        return [], None
    if not policy.combines_requests:
        return [head], None

    limit = policy.max_batch_size
    chosen = [head]
    totals = [head.rows]  # totals[i] = rows of chosen[: i + 1]
    padding = _PaddingBudget(head, policy.max_padding_ratio)
    for item in candidates:
        if totals[-1] == limit:
            break
        if item.group != head.group:
            continue  # different shapes wait for a batch of their own
        if totals[-1] + item.rows > limit:
            break
        if not padding.admits(item):
            continue  # too long or too short for this batch: it waits for one nearer its length
        chosen.append(item)
        totals.append(totals[-1] + item.rows)
    if totals[-1] == limit:
        return chosen, None

    preferred_sizes = policy.preferred_batch_sizes
    preferred = [count for count, total in enumerate(totals, 1) if total in preferred_sizes]
    if preferred:
        return chosen[: preferred[-1]], None

    if idle and policy.dispatch_when_idle and head.arrived_idle and len(queue) == 1:
        return chosen, None

    oldest = queue.oldest_enqueued_at()
    due = (head.enqueued_at if oldest is None else oldest) + policy.max_queue_delay_s
    if draining or now >= due:
        return chosen, None
    return [], due


class _PaddingBudget:
    """Tracks a batch's real and padded sizes (rows x length) as requests join it."""

    def __init__(self, head: Pending, ratio: float | None) -> None:
        self._ratio = ratio
        self._rows = head.rows
        self._longest = head.length or 0
        self._real = head.rows * (head.length or 0)

    def admits(self, item: Pending) -> bool:
        if self._ratio is None or item.length is None:
            return True
        rows = self._rows + item.rows
        longest = max(self._longest, item.length)
        real = self._real + item.rows * item.length
        if rows * longest > (1.0 + self._ratio) * real:
            return False
        self._rows, self._longest, self._real = rows, longest, real
        return True
