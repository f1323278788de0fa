"""Every dashboard query returns data from a real Prometheus holding the documented metrics.

The series are synthesised from the Metrics table of docs/architecture.md (names, types,
labels), written as OpenMetrics, turned into a TSDB block by `promtool tsdb
create-blocks-from openmetrics`, and served by Debian's `prometheus` on loopback with no
scraping. A query that names a wrong metric or label, or aggregates away a label its legend
shows, comes back empty and fails here. Scraping the running server is a separate test.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import time
import urllib.parse

import pytest

from tests.deploy.conftest import free_port, http_get
from tests.deploy.helpers import (
    LABEL_VALUES,
    contract_metrics,
    dashboard_targets,
    grafana_to_promql,
    legend_labels,
    load_dashboard,
    tool,
)

T0 = 1_700_000_000  # fixed: the data and the query time never depend on the clock
STEP_S = 15
SAMPLES = 61  # 15 minutes
QUERY_TIME = T0 + STEP_S * (SAMPLES - 1)
TARGET = {"job": "attnserve", "instance": "attnserve:8002"}
LATENCY_BUCKETS = ["0.001", "0.01", "0.1", "1", "+Inf"]
BATCH_BUCKETS = ["1", "2", "4", "8", "16", "+Inf"]


def _labels(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in pairs.items()) + "}"


def synthetic_openmetrics() -> str:
    """Every contract metric with every label combination, plus up and process metrics."""
    lines: list[str] = []
    times = [T0 + i * STEP_S for i in range(SAMPLES)]

    def series(name: str, labels: dict[str, str], value_at) -> None:
        text = _labels({**TARGET, **labels})
        lines.extend(f"{name}{text} {value_at(i)} {t}" for i, t in enumerate(times))

    for metric in contract_metrics().values():
        combos = [
            dict(zip(metric.labels, values))
            for values in itertools.product(*(LABEL_VALUES[label] for label in metric.labels))
        ]
        if metric.type == "counter":
            family = metric.name.removesuffix("_total")
            lines.append(f"# TYPE {family} counter")
            for labels in combos:
                series(metric.name, labels, lambda i: 3 * i)
        elif metric.type == "gauge":
            lines.append(f"# TYPE {metric.name} gauge")
            for labels in combos:
                series(metric.name, labels, lambda i: 1 + i % 3)
        else:
            lines.append(f"# TYPE {metric.name} histogram")
            buckets = BATCH_BUCKETS if metric.name == "attnserve_batch_size" else LATENCY_BUCKETS
            for labels in combos:
                for k, le in enumerate(buckets, start=1):
                    share = k / len(buckets)
                    series(f"{metric.name}_bucket", {**labels, "le": le}, lambda i, s=share: int(10 * i * s))
                series(f"{metric.name}_sum", labels, lambda i: 0.05 * i)
                series(f"{metric.name}_count", labels, lambda i: 10 * i)
    lines.append("# TYPE up gauge")
    series("up", {}, lambda i: 1)
    lines.append("# TYPE process_resident_memory_bytes gauge")
    series("process_resident_memory_bytes", {}, lambda i: 500_000_000 + i)
    lines.append("# TYPE process_cpu_seconds counter")
    series("process_cpu_seconds_total", {}, lambda i: 0.5 * i)
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory):
    promtool = tool("promtool")
    prometheus = tool("prometheus")
    if promtool is None or prometheus is None:
        pytest.skip("promtool/prometheus are not installed (apt-get install -y prometheus)")
    work = tmp_path_factory.mktemp("prometheus")
    data = work / "data.om"
    data.write_text(synthetic_openmetrics())
    tsdb = work / "tsdb"
    made = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(data), str(tsdb)],
        capture_output=True, text=True, timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    config = work / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\n")
    port = free_port()
    log = open(work / "prometheus.log", "w")
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=100y",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Wait for readiness (bounded); this is a precondition, not a timing assertion.
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail("prometheus exited:\n" + (work / "prometheus.log").read_text()[-3000:])
            try:
                if http_get(url + "/-/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("prometheus never became ready:\n" + (work / "prometheus.log").read_text()[-3000:])
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def query(url: str, expr: str) -> dict:
    params = urllib.parse.urlencode({"query": expr, "time": QUERY_TIME})
    status, body = http_get(f"{url}/api/v1/query?{params}")
    reply = json.loads(body)
    assert status == 200 and reply["status"] == "success", f"{expr}: {reply}"
    return reply["data"]


def test_backfilled_data_is_there(prometheus_url):
    data = query(prometheus_url, 'count(up{job="attnserve"})')
    assert data["result"][0]["value"][1] == "1"
    data = query(prometheus_url, "count by (model) (attnserve_model_ready)")
    assert {r["metric"]["model"] for r in data["result"]} == set(LABEL_VALUES["model"])


def test_an_unknown_metric_comes_back_empty(prometheus_url):
    """Control for the test below: empty really means empty."""
    assert query(prometheus_url, "sum by (model) (rate(attnserve_no_such_metric_total[1m]))")["result"] == []


TARGETS = dashboard_targets(load_dashboard())


@pytest.mark.parametrize(
    "panel, target", TARGETS, ids=[f"{p['title']}-{t['refId']}" for p, t in TARGETS]
)
def test_dashboard_query_returns_finite_values_with_its_legend_labels(prometheus_url, panel, target):
    expr = grafana_to_promql(target["expr"])
    data = query(prometheus_url, expr)
    assert data["resultType"] == "vector", expr
    result = data["result"]
    assert result, f"{panel['title']!r}: no data for {expr}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"{panel['title']!r}: only NaN/Inf for {expr}"
    wanted = legend_labels(target.get("legendFormat", ""))
    for r in result:
        missing = wanted - set(r["metric"])
        assert not missing, f"{panel['title']!r}: legend needs {missing}, query keeps {sorted(r['metric'])}"


def test_model_variable_offers_every_default_model(prometheus_url):
    """The dashboard's model variable (label_values over attnserve_model_ready) lists every
    model `python -m export` writes, the vision-attention classifiers included."""
    from export.defaults import MODEL_NAMES  # torch-free

    variable = next(v for v in load_dashboard()["templating"]["list"] if v["name"] == "model")
    metric, label = variable["query"]["query"].removeprefix("label_values(").removesuffix(")").split(", ")
    params = urllib.parse.urlencode({"match[]": metric, "start": T0, "end": QUERY_TIME})
    status, body = http_get(f"{prometheus_url}/api/v1/label/{label}/values?{params}")
    assert status == 200, body
    assert set(MODEL_NAMES) <= set(json.loads(body)["data"])
