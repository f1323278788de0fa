"""The ceiling: ONNX Runtime in this process on the same ONNX file, no gRPC, no batcher.

Sessions are built exactly as the server's runner builds them (``session_options`` with the
intra-op threads the server would pick, the same execution providers), one per instance, and
each instance runs on its own thread, as the runner's executor does. At every batch size
(powers of two up to max_batch_size, plus max_batch_size) the batches are made of the same
random requests the load generator sends, padded the way the batcher pads them, so the
ceiling is "the same work with nothing around it". Rows per second at the best batch size is
what the service's throughput is compared against.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bench.workload import Workload
from service.runtime.providers import execution_providers
from service.runtime.session import default_intra_op_threads, open_session, session_options


@dataclass
class CeilingPoint:
    batch_size: int
    runs: int
    p50_ms: float
    p99_ms: float
    throughput_rows_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def batch_sizes(max_batch_size: int) -> list[int]:
    sizes, b = [], 1
    while b <= max(1, max_batch_size):
        sizes.append(b)
        b *= 2
    if max_batch_size > 0 and sizes[-1] != max_batch_size:
        sizes.append(max_batch_size)
    return sizes


def server_threads(instances: int, intra_op_threads: int = 0) -> int:
    """What service/app.py gives each session: the flag, else the cores shared among instances."""
    return intra_op_threads or default_intra_op_threads(instances)


def measure(
    workload: Workload,
    model_path: Path,
    samples: list[dict[str, np.ndarray]],
    *,
    provider: str = "cpu",
    device_id: int = 0,
    intra_op_threads: int = 0,
    sizes: list[int] | None = None,
    duration_s: float = 3.0,
    min_runs: int = 5,
    warmup_runs: int = 3,
    seed: int = 1,
    on_step: Callable[[str], None] | None = None,
    on_done: Callable[[CeilingPoint], None] | None = None,
) -> tuple[list[CeilingPoint], dict]:
    """Throughput and latency per batch size; returns the points and the settings used."""
    instances = workload.spec.instance_count
    threads = server_threads(instances, intra_op_threads)
    options = session_options(threads)
    providers = execution_providers(provider, device_id)
    sessions = [open_session(model_path, options, providers) for _ in range(instances)]
    output_names = [o.name for o in sessions[0].get_outputs()]
    rng = np.random.default_rng(seed)
    points = []
    for size in sizes or batch_sizes(workload.spec.max_batch_size):
        if on_step is not None:
            on_step(f"ceiling batch {size}")
        # A few batches per size, each of requests the load generator sends, padded as the
        # batcher pads them (sequences of different lengths: to the longest in the batch).
        batches = [
            workload.batch([samples[i] for i in rng.choice(len(samples), size=size)]) for _ in range(8)
        ]
        for session in sessions:
            for i in range(warmup_runs):
                session.run(output_names, batches[i % len(batches)])
        latencies: list[list[float]] = [[] for _ in sessions]
        rows = [0] * len(sessions)
        start = time.perf_counter()
        stop_at = start + duration_s

        def loop(index: int) -> None:
            session, k = sessions[index], index
            while time.perf_counter() < stop_at or len(latencies[index]) < min_runs:
                batch = batches[k % len(batches)]
                k += 1
                t0 = time.perf_counter()
                session.run(output_names, batch)  # releases the GIL while the graph runs
                latencies[index].append(time.perf_counter() - t0)
                rows[index] += size

        threads_ = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        wall = time.perf_counter() - start
        ms = np.concatenate([np.asarray(x) for x in latencies]) * 1e3
        points.append(CeilingPoint(size, int(ms.size), float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), sum(rows) / wall))
        if on_done is not None:
            on_done(points[-1])
    settings = {
        "instances": instances,
        "intra_op_threads": threads,
        "providers": sessions[0].get_providers(),
        "duration_s_per_batch_size": duration_s,
        "note": "same session_options and execution providers as service.runtime; one thread per instance",
    }
    return points, settings


def best(points: list[CeilingPoint]) -> CeilingPoint | None:
    return max(points, key=lambda p: p.throughput_rows_s) if points else None


class Batch1Reference:
    """In-process batch-1 latency, measured again right before and right after a c=1 level.

    The ceiling runs before the server starts, minutes before the c=1 levels; on a shared
    virtual machine the same ``session.run`` drifts by 20-30% over that span (measured here:
    SE-CNN 3x128x128 batch 1 at 17.5, 22.4 and 29.6 ms p50 within one hour). Added latency is
    a difference of two p50s a millisecond apart, so each c=1 level is compared with the same
    model measured around it, while the server idles. One session with the server's threads
    per instance, requests one at a time, as the service runs them at c=1.
    """

    def __init__(
        self,
        workload: Workload,
        model_path: Path,
        samples: list[dict[str, np.ndarray]],
        *,
        provider: str = "cpu",
        device_id: int = 0,
        intra_op_threads: int = 0,
        seconds: float = 2.0,
        min_runs: int = 20,
    ) -> None:
        threads = server_threads(workload.spec.instance_count, intra_op_threads)
        self._session = open_session(model_path, session_options(threads), execution_providers(provider, device_id))
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._feeds = [workload.batch([s]) for s in samples[:64]]
        self.seconds = seconds
        self.min_runs = min_runs
        self.threads = threads
        for feeds in self._feeds[:3]:
            self._session.run(self._output_names, feeds)

    def sample(self) -> list[float]:
        """Latencies in milliseconds of ``seconds`` (at least ``min_runs``) sequential runs."""
        out: list[float] = []
        stop_at = time.perf_counter() + self.seconds
        k = 0
        while time.perf_counter() < stop_at or len(out) < self.min_runs:
            feeds = self._feeds[k % len(self._feeds)]
            k += 1
            t0 = time.perf_counter()
            self._session.run(self._output_names, feeds)
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    def bracket(self, measure: Callable[[], object]) -> tuple[object, dict]:
        """Runs ``measure`` between two reference samples; returns its result and the reference."""
        before = self.sample()
        result = measure()
        after = self.sample()
        both = np.asarray(before + after)
        return result, {
            "p50_ms": float(np.percentile(both, 50)),
            "before_p50_ms": float(np.percentile(before, 50)),
            "after_p50_ms": float(np.percentile(after, 50)),
            "runs": int(both.size),
            "intra_op_threads": self.threads,
        }
