"""Triton's per-model statistics (the ModelStatistics RPC), accumulated from the observer calls.

Semantics follow Triton's InferenceStatsAggregator so tools that read these (perf_analyzer,
tritonclient) compute the same averages:

- ``success`` / ``fail``: one per request, duration end to end (from ``request_done``);
- ``queue``: one per request that reached an execution, its time in the queue;
- ``compute_input/infer/output``: one per request of a successful execution, each request
  charged the whole execution's time (as Triton does: every request in a batch "took" it);
- ``inference_count``: rows of successful executions; ``execution_count``: those executions;
- ``batch_stats``: per execution size, one count and the execution's compute times.

The runner reports compute times with no batch attached; they are paired with the execution's
``batch_finished`` through a context variable. The runner reports on the event loop in the task
that awaited ``run()``, so as long as the batcher calls ``batch_finished`` in that same task (it
must await ``run()`` to know ``ok``), executions running at the same time never swap times.
An execution without reported compute times still counts, with zero compute time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

_NS = 1_000_000_000


@dataclass(frozen=True)
class Duration:
    """Triton's StatisticDuration: how many, and their total time in nanoseconds."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class InferStats:
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()


@dataclass(frozen=True)
class BatchStats:
    batch_size: int
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()


@dataclass(frozen=True)
class StatisticsSnapshot:
    name: str
    version: str
    last_inference: int  # ms since the epoch, 0 before the first successful execution
    inference_count: int
    execution_count: int
    inference_stats: InferStats
    batch_stats: tuple[BatchStats, ...]  # by batch size, ascending


@dataclass
class _Acc:
    """Mutable twin of Duration, kept under the lock."""

    count: int = 0
    ns: int = 0

    def add(self, count: int, ns: int) -> None:
        self.count += count
        self.ns += ns

    def frozen(self) -> Duration:
        return Duration(self.count, self.ns)


@dataclass
class _BatchAcc:
    compute_input: _Acc = field(default_factory=_Acc)
    compute_infer: _Acc = field(default_factory=_Acc)
    compute_output: _Acc = field(default_factory=_Acc)


# (owner, (input_ns, infer_ns, output_ns)) of the last execution run in this context, awaiting
# its batch_finished. The owner check keeps two models' statistics apart.
_PENDING: ContextVar[tuple[object, tuple[int, int, int]] | None] = ContextVar(
    "attnserve_pending_compute", default=None
)


class ModelStatistics:
    """Thread-safe accumulator for one model version; ``snapshot()`` is what the RPC returns."""

    def __init__(self, name: str, version: str, *, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.version = version
        self._clock = clock
        self._lock = threading.Lock()
        self._last_inference_ms = 0
        self._inference_count = 0
        self._execution_count = 0
        self._success = _Acc()
        self._fail = _Acc()
        self._queue = _Acc()
        self._compute_input = _Acc()
        self._compute_infer = _Acc()
        self._compute_output = _Acc()
        self._batches: dict[int, _BatchAcc] = {}

    # -- the batcher's observer calls ---------------------------------------------------------
    def queue_depth(self, depth: int) -> None:
        """Triton's statistics keep no queue depth; Prometheus has it."""

    def rejected(self, reason: str) -> None:
        """Counted as a failure by ``request_done``, which every request reaches."""

    def batch_started(self, rows: int, queue_waits_s: Sequence[float]) -> None:
        waited = sum(_ns(w) for w in queue_waits_s)
        with self._lock:
            self._queue.add(len(queue_waits_s), waited)

    def batch_finished(self, rows: int, requests: int, ok: bool) -> None:
        pending = _PENDING.get()
        if pending is not None and pending[0] is self:
            _PENDING.set(None)
            input_ns, infer_ns, output_ns = pending[1]
        else:
            input_ns = infer_ns = output_ns = 0
        if not ok:
            return
        now_ms = int(self._clock() * 1000)
        with self._lock:
            self._last_inference_ms = now_ms
            self._inference_count += rows
            self._execution_count += 1
            self._compute_input.add(requests, requests * input_ns)
            self._compute_infer.add(requests, requests * infer_ns)
            self._compute_output.add(requests, requests * output_ns)
            batch = self._batches.setdefault(rows, _BatchAcc())
            batch.compute_input.add(1, input_ns)
            batch.compute_infer.add(1, infer_ns)
            batch.compute_output.add(1, output_ns)

    # -- the runner's observer call -------------------------------------------------------------
    def compute(self, input_s: float, infer_s: float, output_s: float) -> None:
        _PENDING.set((self, (_ns(input_s), _ns(infer_s), _ns(output_s))))

    # -- the transport's calls -----------------------------------------------------------------
    def request_done(self, surface: str, code: str, duration_s: float) -> None:
        """One request answered; ``code`` is the gRPC status name, "OK" for success."""
        with self._lock:
            (self._success if code == "OK" else self._fail).add(1, _ns(duration_s))

    def snapshot(self) -> StatisticsSnapshot:
        with self._lock:
            return StatisticsSnapshot(
                name=self.name,
                version=self.version,
                last_inference=self._last_inference_ms,
                inference_count=self._inference_count,
                execution_count=self._execution_count,
                inference_stats=InferStats(
                    success=self._success.frozen(),
                    fail=self._fail.frozen(),
                    queue=self._queue.frozen(),
                    compute_input=self._compute_input.frozen(),
                    compute_infer=self._compute_infer.frozen(),
                    compute_output=self._compute_output.frozen(),
                ),
                batch_stats=tuple(
                    BatchStats(
                        batch_size=size,
                        compute_input=acc.compute_input.frozen(),
                        compute_infer=acc.compute_infer.frozen(),
                        compute_output=acc.compute_output.frozen(),
                    )
                    for size, acc in sorted(self._batches.items())
                ),
            )


def _ns(seconds: float) -> int:
    return max(0, round(seconds * _NS))
