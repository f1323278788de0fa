"""What deploy/ queries is what service.metrics exports, and what docs/architecture.md promises.

Drives the real Metrics class (fresh registry, a fake NVML for the GPU collector) through one
request, batch and load, then compares the exported series and their labels with the
architecture table and with every series the dashboard and the alert rules select.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from service.metrics import GpuSampler, Metrics
from tests.deploy.helpers import (
    TARGET_LABELS,
    contract_metrics,
    dashboard_targets,
    grafana_to_promql,
    load_dashboard,
    load_rules,
    promql_metric_names,
)


class FakeNvml:
    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=2 * 1024**3, total=16 * 1024**3)

    def nvmlShutdown(self):
        pass


@pytest.fixture(scope="module")
def exported() -> dict[str, set[frozenset[str]]]:
    """series name -> the label-name sets it is exported with."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, process=True, gpu=GpuSampler(FakeNvml(), [object()]))
    try:
        model = metrics.model("se_cnn_classifier", "1")
        model.loaded(1.5)
        model.ready(True)
        model.inflight(1)
        model.queue_depth(2)
        model.batch_started(2, [0.001, 0.002])
        model.compute(0.0001, 0.003, 0.0002)
        model.batch_finished(2, 2, ok=True)
        model.request_done("v2", "OK", 0.004)
        model.rejected("queue_full")
        model.inflight(-1)
        series: dict[str, set[frozenset[str]]] = {}
        for family in registry.collect():
            for sample in family.samples:
                series.setdefault(sample.name, set()).add(frozenset(sample.labels))
        return series
    finally:
        metrics.close()


def test_every_contract_metric_is_exported_with_its_labels(exported):
    for metric in contract_metrics().values():
        for name in metric.series_names():
            assert name in exported, f"{name} is documented but not exported"
            expected = set(metric.labels) | ({"le"} if name.endswith("_bucket") else set())
            assert exported[name] == {frozenset(expected)}, (
                f"{name}: exported with {[sorted(s) for s in exported[name]]}, documented {sorted(expected)}"
            )


def test_every_attnserve_series_exported_is_documented(exported):
    documented = set().union(*(m.series_names() for m in contract_metrics().values()))
    own = {name for name in exported if name.startswith("attnserve_")}
    # prometheus_client adds a *_created series per counter/histogram; Prometheus ignores it here.
    own = {name for name in own if not name.endswith("_created")}
    assert own <= documented, f"exported but not in docs/architecture.md: {sorted(own - documented)}"


def test_every_series_deploy_queries_is_exported(exported):
    recorded = {r["record"] for r in load_rules() if "record" in r}
    queried: dict[str, str] = {}
    for panel, target in dashboard_targets(load_dashboard()):
        for name in promql_metric_names(grafana_to_promql(target["expr"])):
            queried[name] = f"dashboard panel {panel['title']!r}"
    for rule in load_rules():
        for name in promql_metric_names(rule["expr"]) - recorded:
            queried[name] = f"rule {rule.get('record') or rule.get('alert')}"
    for name, where in queried.items():
        if name == "up":  # written by Prometheus itself
            continue
        assert name in exported, f"{where} queries {name}, which the server does not export"
        for labels in exported[name]:
            assert not labels & TARGET_LABELS, f"{name} exports a label Prometheus sets: {labels}"
