"""What the batcher reports, and the shape of the function it calls.

The batcher only reports; metrics (Prometheus) and Triton's ModelStatistics each implement
``BatchObserver``. Calls are made on the event loop and must not block.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import numpy as np

# One execution: named input arrays (batch dim first when the model has one) in, named output
# arrays out. The runner supplies it; tests supply controllable fakes.
Execute = Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]


class BatchObserver(Protocol):
    def queue_depth(self, depth: int) -> None:
        """Queued requests, reported whenever the number changes."""

    def rejected(self, reason: str) -> None:
        """A request left without being computed: queue_full, deadline, cancelled, shutting_down."""

    def batch_started(self, rows: int, queue_waits_s: Sequence[float]) -> None:
        """An execution was formed: its rows and each request's time in the queue."""

    def batch_finished(self, rows: int, requests: int, ok: bool) -> None:
        """An execution ended; ``ok`` is False when its requests got an error."""


class NullObserver:
    """Reports nowhere; the default when no observer is injected."""

    def queue_depth(self, depth: int) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def batch_started(self, rows: int, queue_waits_s: Sequence[float]) -> None:
        pass

    def batch_finished(self, rows: int, requests: int, ok: bool) -> None:
        pass
