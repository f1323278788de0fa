"""Metrics (Prometheus, fresh registry per test), ModelStatistics (Triton's counters), GpuSampler."""

from __future__ import annotations

import asyncio
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.metrics import (
    LATENCY_BUCKETS,
    REJECTION_REASONS,
    GpuSampler,
    Metrics,
    start_metrics_http,
)
from service.statistics import Duration, ModelStatistics

MODEL = {"model": "enc", "version": "1"}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**MODEL, **labels})


# -- Prometheus ----------------------------------------------------------------------------


def test_model_returns_one_cached_reporter_per_version(metrics: Metrics) -> None:
    assert metrics.model("enc", "1") is metrics.model("enc", "1")
    assert metrics.model("enc", "1") is not metrics.model("enc", "2")


def test_request_histogram_and_counter_rise_per_request(metrics: Metrics, registry: CollectorRegistry) -> None:
    m = metrics.model("enc", "1")
    for duration in (0.0002, 0.003, 0.003, 20.0):
        m.request_done("v2", "OK", duration)
    m.request_done("api", "UNAVAILABLE", 0.001)
    m.request_done("v2", "OK", 0.001, protocol="http")

    assert value(registry, "attnserve_requests_total", surface="v2", protocol="grpc", code="OK") == 4
    assert value(registry, "attnserve_requests_total", surface="api", protocol="grpc", code="UNAVAILABLE") == 1
    # The same model and surface over HTTP is its own series (issue 16), gRPC's stay as they were.
    assert value(registry, "attnserve_requests_total", surface="v2", protocol="http", code="OK") == 1
    hist = "attnserve_request_duration_seconds"
    assert value(registry, f"{hist}_count", surface="v2", protocol="grpc") == 4
    assert value(registry, f"{hist}_sum", surface="v2", protocol="grpc") == pytest.approx(20.0062)
    assert value(registry, f"{hist}_bucket", surface="v2", protocol="grpc", le="0.00025") == 1
    assert value(registry, f"{hist}_bucket", surface="v2", protocol="grpc", le="0.005") == 3
    assert value(registry, f"{hist}_bucket", surface="v2", protocol="grpc", le="10.0") == 3  # 20 s is past the top bucket
    assert value(registry, f"{hist}_bucket", surface="v2", protocol="grpc", le="+Inf") == 4
    assert value(registry, f"{hist}_count", surface="v2", protocol="http") == 1


def test_latency_buckets_span_100us_to_10s() -> None:
    assert LATENCY_BUCKETS[0] == 0.0001 and LATENCY_BUCKETS[-1] == 10.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


def test_batch_observer_calls(metrics: Metrics, registry: CollectorRegistry) -> None:
    m = metrics.model("enc", "1")
    m.queue_depth(7)
    assert value(registry, "attnserve_queue_depth") == 7
    m.queue_depth(2)
    assert value(registry, "attnserve_queue_depth") == 2

    m.batch_started(rows=5, queue_waits_s=[0.001, 0.002])
    m.batch_finished(rows=5, requests=2, ok=True)
    m.batch_started(rows=3, queue_waits_s=[0.5])
    m.batch_finished(rows=3, requests=1, ok=False)

    assert value(registry, "attnserve_batch_size_count") == 2
    assert value(registry, "attnserve_batch_size_bucket", le="4.0") == 1
    assert value(registry, "attnserve_batch_size_bucket", le="8.0") == 2
    assert value(registry, "attnserve_queue_duration_seconds_count") == 3
    assert value(registry, "attnserve_queue_duration_seconds_sum") == pytest.approx(0.503)
    # Only the successful execution counts as computed work.
    assert value(registry, "attnserve_inferences_total") == 5
    assert value(registry, "attnserve_executions_total") == 1


def test_rejections_by_reason_start_at_zero(metrics: Metrics, registry: CollectorRegistry) -> None:
    m = metrics.model("enc", "1")
    for reason in REJECTION_REASONS:
        assert value(registry, "attnserve_rejections_total", reason=reason) == 0
    m.rejected("queue_full")
    m.rejected("queue_full")
    m.rejected("deadline")
    assert value(registry, "attnserve_rejections_total", reason="queue_full") == 2
    assert value(registry, "attnserve_rejections_total", reason="deadline") == 1
    assert value(registry, "attnserve_rejections_total", reason="cancelled") == 0
    with pytest.raises(ValueError, match="bogus"):
        m.rejected("bogus")


def test_compute_inflight_load_and_ready(metrics: Metrics, registry: CollectorRegistry) -> None:
    m = metrics.model("enc", "1")
    m.compute(0.0001, 0.02, 0.0003)
    m.compute(0.0001, 0.04, 0.0003)
    assert value(registry, "attnserve_compute_input_duration_seconds_count") == 2
    assert value(registry, "attnserve_compute_infer_duration_seconds_sum") == pytest.approx(0.06)
    assert value(registry, "attnserve_compute_output_duration_seconds_bucket", le="0.0005") == 2

    m.inflight(+1)
    m.inflight(+1)
    m.inflight(-1)
    assert value(registry, "attnserve_inflight_requests") == 1

    m.loaded(1.25)
    assert value(registry, "attnserve_model_load_duration_seconds") == 1.25
    m.ready(True)
    assert value(registry, "attnserve_model_ready") == 1
    m.ready(False)
    assert value(registry, "attnserve_model_ready") == 0


def test_remove_model_drops_its_series_only(metrics: Metrics, registry: CollectorRegistry) -> None:
    gone, kept = metrics.model("enc", "1"), metrics.model("enc", "2")
    for m in (gone, kept):
        m.request_done("v2", "OK", 0.01)
        m.batch_started(2, [0.001])
        m.batch_finished(2, 1, True)
        m.compute(0.001, 0.001, 0.001)
        m.ready(True)

    metrics.remove_model("enc", "1")

    def series(version: str) -> list[str]:
        return [
            s.name
            for family in registry.collect()
            if family.name.startswith("attnserve_")
            for s in family.samples
            if s.labels.get("version") == version
        ]

    assert series("1") == []
    assert "attnserve_requests_total" in series("2") and "attnserve_model_ready" in series("2")
    # A later load of the same version starts from fresh series.
    assert metrics.model("enc", "1") is not gone
    assert value(registry, "attnserve_executions_total") == 0


def test_every_contract_name_is_exported(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.model("enc", "1").request_done("v2", "OK", 0.01)
    names = {s.name for family in registry.collect() for s in family.samples}
    for name in (
        "attnserve_requests_total",
        "attnserve_request_duration_seconds_bucket",
        "attnserve_queue_duration_seconds_count",
        "attnserve_compute_input_duration_seconds_count",
        "attnserve_compute_infer_duration_seconds_count",
        "attnserve_compute_output_duration_seconds_count",
        "attnserve_batch_size_count",
        "attnserve_inferences_total",
        "attnserve_executions_total",
        "attnserve_queue_depth",
        "attnserve_inflight_requests",
        "attnserve_rejections_total",
        "attnserve_model_load_duration_seconds",
        "attnserve_model_ready",
        "process_cpu_seconds_total",
    ):
        assert name in names, name


async def test_http_endpoint_serves_the_text_format(metrics: Metrics) -> None:
    metrics.model("enc", "1").request_done("v2", "OK", 0.01)
    server = start_metrics_http(metrics, "127.0.0.1", 0)
    try:
        assert server.port > 0
        url = f"http://127.0.0.1:{server.port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    finally:
        server.shutdown()
    assert 'attnserve_requests_total{code="OK",model="enc",protocol="grpc",surface="v2",version="1"} 1.0' in body
    assert "# TYPE attnserve_request_duration_seconds histogram" in body
    assert not server.thread.is_alive()


# -- Triton statistics ------------------------------------------------------------------------


def test_statistics_accumulate_like_triton() -> None:
    stats = ModelStatistics("enc", "1", clock=lambda: 1_700_000_000.5)
    stats.batch_started(rows=6, queue_waits_s=[0.001, 0.002])
    stats.compute(0.000001, 0.01, 0.000002)
    stats.batch_finished(rows=6, requests=2, ok=True)
    stats.request_done("v2", "OK", 0.02)
    stats.request_done("v2", "OK", 0.03)
    stats.request_done("api", "DEADLINE_EXCEEDED", 0.5)

    snap = stats.snapshot()
    assert (snap.name, snap.version) == ("enc", "1")
    assert snap.last_inference == 1_700_000_000_500
    assert snap.inference_count == 6
    assert snap.execution_count == 1
    s = snap.inference_stats
    assert s.success == Duration(2, 50_000_000)
    assert s.fail == Duration(1, 500_000_000)
    assert s.queue == Duration(2, 3_000_000)
    # Each request of the execution is charged the execution's compute time.
    assert s.compute_input == Duration(2, 2_000)
    assert s.compute_infer == Duration(2, 20_000_000)
    assert s.compute_output == Duration(2, 4_000)
    assert [(b.batch_size, b.compute_infer) for b in snap.batch_stats] == [(6, Duration(1, 10_000_000))]


def test_batch_stats_by_size_and_failed_executions_ignored() -> None:
    stats = ModelStatistics("enc", "1")
    for rows, infer_s, ok in ((4, 0.004, True), (1, 0.001, True), (4, 0.006, True), (8, 0.5, False)):
        stats.batch_started(rows, [0.0] * rows)
        if ok:
            stats.compute(0.0, infer_s, 0.0)
        stats.batch_finished(rows, rows, ok)
    snap = stats.snapshot()
    assert snap.execution_count == 3
    assert snap.inference_count == 9
    assert [(b.batch_size, b.compute_infer) for b in snap.batch_stats] == [
        (1, Duration(1, 1_000_000)),
        (4, Duration(2, 10_000_000)),
    ]
    assert snap.last_inference > 0


async def test_concurrent_executions_keep_their_own_compute_times() -> None:
    """Two executions in separate tasks interleave; each batch size gets its own times."""
    stats = ModelStatistics("enc", "1")
    small_computed, large_computed = asyncio.Event(), asyncio.Event()

    async def execution(rows: int, infer_s: float, mine: asyncio.Event, other: asyncio.Event) -> None:
        stats.batch_started(rows, [0.0])
        stats.compute(0.0, infer_s, 0.0)  # as OrtRunner.run does, in the awaiting task
        mine.set()
        await other.wait()  # the other execution reports its compute before this one finishes
        stats.batch_finished(rows, 1, True)

    await asyncio.gather(
        execution(2, 0.002, small_computed, large_computed),
        execution(32, 0.032, large_computed, small_computed),
    )
    by_size = {b.batch_size: b.compute_infer for b in stats.snapshot().batch_stats}
    assert by_size == {2: Duration(1, 2_000_000), 32: Duration(1, 32_000_000)}


def test_model_metrics_feed_their_statistics(metrics: Metrics) -> None:
    m = metrics.model("enc", "1")
    m.batch_started(3, [0.01])
    m.compute(0.001, 0.002, 0.003)
    m.batch_finished(3, 1, True)
    m.request_done("v2", "OK", 0.02)
    snap = m.statistics.snapshot()
    assert snap.inference_count == 3
    assert snap.inference_stats.success.count == 1
    assert snap.batch_stats[0].compute_output == Duration(1, 3_000_000)


# -- GPU ---------------------------------------------------------------------------------------


def test_gpu_sampler_is_disabled_cleanly_without_nvml(registry: CollectorRegistry) -> None:
    def no_nvml() -> Any:
        raise ImportError("No module named 'pynvml'")

    assert GpuSampler.open(no_nvml) is None
    Metrics(registry, gpu=None)
    assert not [f for f in registry.collect() if f.name.startswith("attnserve_gpu")]


def test_gpu_sampler_default_loader_here_is_disabled() -> None:
    # This machine has neither nvidia-ml-py nor a GPU; on a GPU host this sampler would be live.
    sampler = GpuSampler.open()
    if sampler is not None:
        sampler.close()
        pytest.skip("NVML is present on this host")


class FakeNvml:
    def __init__(self, devices: list[tuple[int, int, int]], broken: set[int] = frozenset()) -> None:
        self.devices, self.broken, self.shutdown = devices, broken, False

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        if handle in self.broken:
            raise RuntimeError("GPU is lost")
        return SimpleNamespace(gpu=self.devices[handle][0], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        _, used, total = self.devices[handle]
        return SimpleNamespace(used=used, total=total, free=total - used)


def test_gpu_sampler_reads_nvml_at_scrape(registry: CollectorRegistry) -> None:
    nvml = FakeNvml([(37, 2 << 30, 80 << 30), (0, 0, 80 << 30), (50, 1, 2)], broken={2})
    sampler = GpuSampler.open(lambda: nvml)
    assert sampler is not None and sampler.device_count == 3
    metrics = Metrics(registry, gpu=sampler)

    assert registry.get_sample_value("attnserve_gpu_utilization_ratio", {"gpu": "0"}) == pytest.approx(0.37)
    assert registry.get_sample_value("attnserve_gpu_memory_used_bytes", {"gpu": "0"}) == 2 << 30
    assert registry.get_sample_value("attnserve_gpu_memory_total_bytes", {"gpu": "1"}) == 80 << 30
    # A failing device is skipped; the scrape still succeeds for the rest.
    assert registry.get_sample_value("attnserve_gpu_utilization_ratio", {"gpu": "2"}) is None

    nvml.devices[0] = (90, 3 << 30, 80 << 30)
    assert registry.get_sample_value("attnserve_gpu_utilization_ratio", {"gpu": "0"}) == pytest.approx(0.9)

    metrics.close()
    assert nvml.shutdown
    assert registry.get_sample_value("attnserve_gpu_utilization_ratio", {"gpu": "0"}) is None
