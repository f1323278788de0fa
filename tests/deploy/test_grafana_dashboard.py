"""Grafana: provisioning, the dashboard's structure and layout, its datasource, and queries
that use only contract metrics and labels and cover every contract metric."""

from __future__ import annotations

import json
import re

import yaml

from tests.deploy.helpers import (
    DASHBOARD_PROVIDERS,
    DEPLOY,
    STANDARD_SERIES,
    contract_label_names,
    contract_metrics,
    contract_series_names,
    dashboard_panels,
    dashboard_targets,
    grafana_to_promql,
    legend_labels,
    load_dashboard,
    promql_label_names,
    promql_metric_names,
    provisioned_datasource_uid,
)


def test_datasource_and_dashboard_provisioning():
    assert provisioned_datasource_uid() == "attnserve-prometheus"
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"][0]
    assert provider["type"] == "file"


def test_dashboard_structure():
    dash = load_dashboard()
    assert dash["uid"] and dash["title"]
    assert dash["schemaVersion"] >= 36
    panels = dashboard_panels(dash)
    assert len(panels) >= 15
    ids = [p["id"] for p in dash["panels"]] + [p["id"] for p in panels if p not in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no queries"
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


def test_dashboard_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_dashboard_datasource_is_the_provisioned_one():
    uid = provisioned_datasource_uid()
    dash = load_dashboard()
    for panel in dashboard_panels(dash):
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == uid, var["name"]
    # nothing else in the file names a datasource by another uid
    uids = set(re.findall(r'"uid":\s*"([^"]+)"', json.dumps(dash)))
    assert uids <= {uid, dash["uid"], "-- Grafana --"}, uids


def test_dashboard_queries_use_only_contract_metrics_and_labels():
    allowed = contract_series_names() | STANDARD_SERIES
    labels = contract_label_names()
    for panel, target in dashboard_targets(load_dashboard()):
        expr = target["expr"]
        unknown = promql_metric_names(grafana_to_promql(expr)) - allowed
        assert not unknown, f"{panel['title']!r}: unknown series {unknown} in {expr}"
        bad = promql_label_names(expr) - labels
        assert not bad, f"{panel['title']!r}: unknown labels {bad} in {expr}"
        assert not legend_labels(target.get("legendFormat", "")) - labels, panel["title"]


def test_dashboard_shows_every_contract_metric():
    used = set()
    for _, target in dashboard_targets(load_dashboard()):
        used |= promql_metric_names(grafana_to_promql(target["expr"]))
    for metric in contract_metrics().values():
        assert metric.series_names() & used, f"{metric.name} is on no panel"
    assert {"process_resident_memory_bytes", "up"} <= used


def test_dashboard_has_the_required_views():
    titles = " | ".join(p["title"].lower() for p in dashboard_panels(load_dashboard()))
    for words in ("p50 / p95 / p99", "queue wait vs compute", "batch size distribution",
                  "by grpc status", "queue depth", "in-flight", "rejections by reason",
                  "gpu utilisation", "gpu memory", "resident memory", "requests per second"):
        assert words in titles, words
    quantile_panel = next(p for p in dashboard_panels(load_dashboard()) if "p50 / p95 / p99" in p["title"])
    exprs = " ".join(t["expr"] for t in quantile_panel["targets"])
    for q in ("0.50", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (model, le)" in exprs
