"""Every Prometheus collector the server exports, on an injected CollectorRegistry.

Names and labels are the contract in docs/architecture.md (Metrics). Layers report through a
:class:`ModelMetrics` (labels bound once per model version); nothing here is read back by the
request path. Each ModelMetrics also feeds that version's :class:`ModelStatistics` (Triton's
ModelStatistics RPC), so one observer object serves the batcher, the runner, the repository and
the transport: ``metrics.model(name, version)`` is the only thing the composition root passes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.statistics import ModelStatistics

log = logging.getLogger(__name__)

# 100 us .. 10 s in 1-2.5-5 steps: p99 of a sub-millisecond CPU execution and of a multi-second
# overloaded queue both land inside a bucket.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REJECTION_REASONS = ("queue_full", "deadline", "cancelled", "invalid_input", "shutting_down")
# Why an execution (a batch) that reached ONNX Runtime failed: the graph raised, or it ran past
# the model's execution timeout and was abandoned.
EXECUTION_FAILURE_REASONS = ("error", "timeout")

_MODEL = ("model", "version")


class Metrics:
    """Owns the collectors. One per process (or per test), never on the global default registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        process: bool = True,
        gpu: GpuSampler | None = None,
    ) -> None:
        self.registry = registry
        r = registry
        self.requests = Counter(
            "attnserve_requests_total", "Requests answered, by surface, protocol and gRPC status code.",
            _MODEL + ("surface", "protocol", "code"), registry=r,
        )
        self.request_duration = Histogram(
            "attnserve_request_duration_seconds", "End-to-end request latency inside the server.",
            _MODEL + ("surface", "protocol"), buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_duration = _latency(
            "attnserve_queue_duration_seconds", "Time a request waited in the batch queue.", r
        )
        self.compute_input = _latency(
            "attnserve_compute_input_duration_seconds", "Per execution: input checks and copy to the device.", r
        )
        self.compute_infer = _latency("attnserve_compute_infer_duration_seconds", "Per execution: the graph run.", r)
        self.compute_output = _latency(
            "attnserve_compute_output_duration_seconds", "Per execution: output copy back to the host.", r
        )
        self.batch_size = Histogram(
            "attnserve_batch_size", "Rows per execution.", _MODEL, buckets=BATCH_BUCKETS, registry=r
        )
        self.inferences = Counter("attnserve_inferences_total", "Rows computed successfully.", _MODEL, registry=r)
        self.executions = Counter("attnserve_executions_total", "Successful executions (batches).", _MODEL, registry=r)
        self.queue_depth = Gauge("attnserve_queue_depth", "Requests waiting in the batch queue.", _MODEL, registry=r)
        self.inflight = Gauge(
            "attnserve_inflight_requests", "Requests accepted and not yet answered.", _MODEL, registry=r
        )
        self.rejections = Counter(
            "attnserve_rejections_total", "Requests refused or dropped before compute, by reason.",
            _MODEL + ("reason",), registry=r,
        )
        self.execution_failures = Counter(
            "attnserve_execution_failures_total", "Executions (batches) that failed in the runner, by reason.",
            _MODEL + ("reason",), registry=r,
        )
        self.stuck_executions = Gauge(
            "attnserve_stuck_executions",
            "Executions abandoned past the execution timeout whose thread has not returned yet.",
            _MODEL, registry=r,
        )
        self.load_duration = Gauge(
            "attnserve_model_load_duration_seconds", "Time the last load of this version took.", _MODEL, registry=r
        )
        self.model_ready = Gauge("attnserve_model_ready", "1 when the version serves, else 0.", _MODEL, registry=r)
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.gpu = gpu
        if gpu is not None:
            r.register(gpu)
        self._models: dict[tuple[str, str], ModelMetrics] = {}
        self._lock = threading.Lock()

    def model(self, name: str, version: str) -> ModelMetrics:
        """The bound reporter for one model version; the same object on every call until removed."""
        key = (name, str(version))
        with self._lock:
            found = self._models.get(key)
            if found is None:
                found = self._models[key] = ModelMetrics(self, *key)
            return found

    def remove_model(self, name: str, version: str) -> None:
        """Drops every series of that version (on unload), so dashboards do not show stale values."""
        with self._lock:
            found = self._models.pop((name, str(version)), None)
        if found is not None:
            found.remove_series()

    def close(self) -> None:
        if self.gpu is not None:
            self.registry.unregister(self.gpu)
            self.gpu.close()
            self.gpu = None


def _latency(name: str, documentation: str, registry: CollectorRegistry) -> Histogram:
    return Histogram(name, documentation, _MODEL, buckets=LATENCY_BUCKETS, registry=registry)


class ModelMetrics:
    """Observer for one model version: the batcher's, the runner's and the transport's calls.

    Every call also goes to ``statistics`` (Triton's counters). Calls come from the event loop;
    prometheus_client and ModelStatistics are thread-safe, so a call from elsewhere is safe too.
    """

    def __init__(self, metrics: Metrics, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.statistics = ModelStatistics(name, version)
        self._m = metrics
        labels = (name, version)
        self._labels = labels
        self._queue_duration = metrics.queue_duration.labels(*labels)
        self._compute_input = metrics.compute_input.labels(*labels)
        self._compute_infer = metrics.compute_infer.labels(*labels)
        self._compute_output = metrics.compute_output.labels(*labels)
        self._batch_size = metrics.batch_size.labels(*labels)
        self._inferences = metrics.inferences.labels(*labels)
        self._executions = metrics.executions.labels(*labels)
        self._queue_depth = metrics.queue_depth.labels(*labels)
        self._inflight = metrics.inflight.labels(*labels)
        self._load_duration = metrics.load_duration.labels(*labels)
        self._ready = metrics.model_ready.labels(*labels)
        # Every reason exists from the start at 0, so rate() and alerts see the first rejection.
        self._rejections = {reason: metrics.rejections.labels(*labels, reason) for reason in REJECTION_REASONS}
        self._failures = {
            reason: metrics.execution_failures.labels(*labels, reason) for reason in EXECUTION_FAILURE_REASONS
        }
        self._stuck = metrics.stuck_executions.labels(*labels)
        # (surface, protocol, code) seen, so remove_series can find the request series again.
        self._request_labels: set[tuple[str, str, str]] = set()
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    # -- batcher --------------------------------------------------------------------------
    def queue_depth(self, depth: int) -> None:
        self._queue_depth.set(depth)
        self.statistics.queue_depth(depth)

    def rejected(self, reason: str) -> None:
        counter = self._rejections.get(reason)
        if counter is None:
            raise ValueError(f"unknown rejection reason {reason!r}; one of {REJECTION_REASONS}")
        counter.inc()
        self.statistics.rejected(reason)

    def batch_started(self, rows: int, queue_waits_s: Sequence[float]) -> None:
        self._batch_size.observe(rows)
        for wait in queue_waits_s:
            self._queue_duration.observe(wait)
        self.statistics.batch_started(rows, queue_waits_s)

    def batch_finished(self, rows: int, requests: int, ok: bool) -> None:
        if ok:
            self._inferences.inc(rows)
            self._executions.inc()
        self.statistics.batch_finished(rows, requests, ok)

    # -- runner ---------------------------------------------------------------------------
    def compute(self, input_s: float, infer_s: float, output_s: float) -> None:
        self._compute_input.observe(input_s)
        self._compute_infer.observe(infer_s)
        self._compute_output.observe(output_s)
        self.statistics.compute(input_s, infer_s, output_s)

    def execution_failed(self, reason: str) -> None:
        counter = self._failures.get(reason)
        if counter is None:
            raise ValueError(f"unknown execution failure reason {reason!r}; one of {EXECUTION_FAILURE_REASONS}")
        counter.inc()

    def stuck_executions(self, count: int) -> None:
        self._stuck.set(count)

    # -- transport ------------------------------------------------------------------------
    def request_done(self, surface: str, code: str, duration_s: float, protocol: str = "grpc") -> None:
        """One request answered on ``surface`` ("v2" or "api") over ``protocol`` ("grpc" or
        "http") with gRPC status name ``code`` (HTTP answers are counted by the code they stand for)."""
        # The labelled children are looked up once per (surface, protocol, code): labels() takes
        # a lock and builds a tuple on every call, and this runs for every request.
        key = (surface, protocol, code)
        children = self._request_children.get(key)
        if children is None:
            with self._lock:
                self._request_labels.add(key)
            children = self._request_children[key] = (
                self._m.requests.labels(*self._labels, surface, protocol, code),
                self._m.request_duration.labels(*self._labels, surface, protocol),
            )
        children[0].inc()
        children[1].observe(duration_s)
        self.statistics.request_done(surface, code, duration_s)

    def inflight(self, delta: int) -> None:
        self._inflight.inc(delta)

    # -- repository -----------------------------------------------------------------------
    def loaded(self, duration_s: float) -> None:
        self._load_duration.set(duration_s)

    def ready(self, is_ready: bool) -> None:
        self._ready.set(1 if is_ready else 0)

    def remove_series(self) -> None:
        m, labels = self._m, self._labels
        with self._lock:
            seen = sorted(self._request_labels)
            self._request_labels.clear()
            self._request_children.clear()
        for surface, protocol, code in seen:
            m.requests.remove(*labels, surface, protocol, code)
        for surface, protocol in {(s, p) for s, p, _ in seen}:
            m.request_duration.remove(*labels, surface, protocol)
        for reason in REJECTION_REASONS:
            m.rejections.remove(*labels, reason)
        for reason in EXECUTION_FAILURE_REASONS:
            m.execution_failures.remove(*labels, reason)
        for collector in (
            m.queue_duration, m.compute_input, m.compute_infer, m.compute_output, m.batch_size,
            m.inferences, m.executions, m.queue_depth, m.inflight, m.load_duration, m.model_ready,
            m.stuck_executions,
        ):
            collector.remove(*labels)


class GpuSampler(Collector):
    """A custom collector: reads NVML at scrape time and reports each GPU's use and memory.

    Reading on scrape (rather than sampling in a thread) means no thread, no stale values and
    no cost between scrapes. Created by :meth:`open`, which returns None where there is no NVML
    (no ``nvidia-ml-py``, no driver, no GPU), so CPU hosts export no GPU series at all.
    """

    def __init__(self, nvml: Any, handles: Sequence[Any]) -> None:
        self._nvml = nvml
        self._handles = list(handles)

    @classmethod
    def open(cls, load: Callable[[], Any] | None = None) -> GpuSampler | None:
        """``load`` returns the pynvml module; the default imports it (tests pass a fake)."""
        try:
            nvml = (load or _import_pynvml)()
            nvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded
            log.debug("GPU metrics disabled: NVML unavailable (%s)", exc)
            return None
        try:
            count = nvml.nvmlDeviceGetCount()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            log.debug("GPU metrics disabled: cannot list devices (%s)", exc)
            nvml.nvmlShutdown()
            return None
        if not handles:
            log.debug("GPU metrics disabled: NVML sees no GPU")
            nvml.nvmlShutdown()
            return None
        return cls(nvml, handles)

    @property
    def device_count(self) -> int:
        return len(self._handles)

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering does not call NVML.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        util, used, total = self._families()
        for index, handle in enumerate(self._handles):
            try:
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU fallen off the bus must not fail the whole scrape
                log.warning("NVML read of GPU %d failed: %s", index, exc)
                continue
            gpu = str(index)
            util.add_metric([gpu], rates.gpu / 100.0)
            used.add_metric([gpu], float(memory.used))
            total.add_metric([gpu], float(memory.total))
        return [util, used, total]

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown failed: %s", exc)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "attnserve_gpu_utilization_ratio", "GPU busy fraction over NVML's sample period.", labels=["gpu"]
            ),
            GaugeMetricFamily("attnserve_gpu_memory_used_bytes", "GPU memory in use (all processes).", labels=["gpu"]),
            GaugeMetricFamily("attnserve_gpu_memory_total_bytes", "GPU memory installed.", labels=["gpu"]),
        )


def _import_pynvml() -> Any:
    import pynvml  # from the nvidia-ml-py package (the gpu extra); imported only when asked for

    return pynvml


@dataclass
class MetricsServer:
    """The /metrics HTTP endpoint (a daemon thread serving prometheus_client's WSGI app)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The bound port; the one picked by the OS when started on port 0."""
        return int(self.server.server_port)

    def shutdown(self) -> None:
        self.server.shutdown()  # returns once serve_forever has left its loop
        self.server.server_close()
        self.thread.join()


def start_metrics_http(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Serves ``metrics.registry`` in the Prometheus text format on http://host:port/metrics."""
    server, thread = start_http_server(port, addr=host or "0.0.0.0", registry=metrics.registry)
    log.info("metrics on http://%s:%d/metrics", host or "0.0.0.0", server.server_port)
    return MetricsServer(server, thread)
