"""A real Prometheus scrapes the running server under traffic; the dashboard and rules see it.

One server (``python -m service serve``, real exported models) runs over a copy of the model
repository in which ``se_cnn_classifier`` is edited to overflow on demand: ``max_queue_size: 1``,
``preferred_batch_size: [2]`` and a five-minute ``max_queue_delay``. A 2-row request to it runs
at once (a preferred size); a 1-row request stays queued until it is cancelled, and while it is
queued every other request is refused with UNAVAILABLE (queue_full). So overflow is decided by
the test, not by timing, and the other two models keep their shipped configs.

Debian's ``prometheus`` runs on loopback with ``deploy/prometheus/prometheus.yml`` (intervals
1 s, the attnserve target rewritten to the server's metrics port) and the rules from
``deploy/prometheus/rules``. The fixture waits until Prometheus has scraped the server before
any traffic, sends two rounds of mixed traffic (OK on all three models, wrong-shape requests,
a queue overflow with a cancelled held request), and after each round waits until Prometheus's
stored values equal the server's own ``/metrics``; then until every rule group has been
evaluated after that. Two rounds make every series that appears in round one grow in round
two, so rates and quantiles have something to work on.

Then: every rule is healthy, every recording rule has a finite value for every model, every
dashboard query returns data (the GPU panels excepted, see ``test_dashboard_query``), the
request histogram counts exactly the requests sent, and SIGTERM takes the target down.
Tests run in file order; the last one stops the server.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import ServerProcess, copy_repository
from tests.deploy.conftest import finite, poll, sample_values
from tests.deploy.helpers import dashboard_targets, legend_labels, load_dashboard, load_rules
from tests.deploy.live_traffic import (
    HELD,
    INVALID_PER_ROUND,
    REJECTED_PER_ROUND,
    ROUNDS,
    Live,
    hold_one,
    sample_sum,
    scrape_config,
    send_ok,
    server_samples,
    traffic_round,
    wait_until_rules_evaluated,
    wait_until_scraped,
)
from tests.integration.support import ENCODER, MODELS, SAGAN

# Grafana's $__rate_interval is at least 4 scrape intervals; here the window covers the whole
# run, so each panel shows what the test sent, not whatever fell into the last few seconds.
RATE_WINDOW = "5m"


@pytest.fixture(scope="module")
def live(model_repository: Path, tmp_path_factory: pytest.TempPathFactory, live_prometheus) -> Iterator[Live]:
    repository = copy_repository(model_repository, tmp_path_factory.mktemp("live_repository"), edits={HELD: hold_one})
    server = ServerProcess(repository).start()
    try:
        address = urllib.parse.urlsplit(server.metrics_url).netloc
        prometheus = live_prometheus(scrape_config(address))
        with grpcclient.InferenceServerClient(server.url) as client:
            state = Live(server, prometheus, client, repository, address, np.random.default_rng(5))
            prometheus.wait_for(
                f'up{{job="attnserve", instance="{address}"}}', lambda r: sample_values(r) == [1.0], "the target up"
            )
            # Every model's counters are stored at 0 before any traffic, so the first requests count.
            prometheus.wait_for(
                'count by (model) (attnserve_rejections_total{job="attnserve", reason="queue_full"})',
                lambda r: {s["metric"]["model"] for s in r} == set(MODELS),
                "the models' series before traffic",
            )
            for _ in range(ROUNDS):
                traffic_round(state)
                scraped = wait_until_scraped(state)
            wait_until_rules_evaluated(state, scraped)
            yield state
    finally:
        server.stop()


# -- the server's own numbers -------------------------------------------------------------------------
def test_request_histogram_counts_every_request(live: Live) -> None:
    """N v2 requests -> the latency histogram's count and +Inf bucket rise by exactly N, the row
    counters by the rows sent; and Prometheus stores the same count."""
    rows = [1, 3, 2, 4, 1]
    before = server_samples(live.server)
    for n in rows:  # one at a time: each request is its own execution
        send_ok(live, ENCODER, n)
    after = server_samples(live.server)

    def delta(name: str, **labels: str) -> float:
        return sample_sum(after, name, model=ENCODER, **labels) - sample_sum(before, name, model=ENCODER, **labels)

    assert delta("attnserve_request_duration_seconds_count", surface="v2") == len(rows)
    assert delta("attnserve_request_duration_seconds_bucket", surface="v2", le="+Inf") == len(rows)
    assert delta("attnserve_request_duration_seconds_sum", surface="v2") > 0
    assert delta("attnserve_requests_total", surface="v2", code="OK") == len(rows)
    assert delta("attnserve_inferences_total") == sum(rows)
    assert delta("attnserve_batch_size_sum") == sum(rows)
    assert delta("attnserve_batch_size_count") == len(rows)
    assert delta("attnserve_executions_total") == len(rows)
    assert delta("attnserve_queue_duration_seconds_count") == len(rows)
    assert delta("attnserve_compute_infer_duration_seconds_count") == len(rows)

    count = sample_sum(after, "attnserve_request_duration_seconds_count", model=ENCODER, surface="v2")
    live.prometheus.wait_for(
        f'sum(attnserve_request_duration_seconds_count{{model="{ENCODER}", surface="v2"}})',
        lambda result: sample_values(result) == [count],
        f"Prometheus to store {ENCODER}'s request count {count}",
    )


def test_rejections_are_counted_by_reason(live: Live) -> None:
    """What the fixture's clients were refused is what the server and Prometheus count."""
    expected = {
        (HELD, "queue_full"): ROUNDS * REJECTED_PER_ROUND,
        (HELD, "cancelled"): ROUNDS,
        (SAGAN, "invalid_input"): ROUNDS * INVALID_PER_ROUND,
    }
    samples = server_samples(live.server)
    stored = {
        (r["metric"]["model"], r["metric"]["reason"]): float(r["value"][1])
        for r in live.prometheus.query('sum by (model, reason) (attnserve_rejections_total{job="attnserve"})')
    }
    for (model, reason), count in expected.items():
        assert sample_sum(samples, "attnserve_rejections_total", model=model, reason=reason) == count, (model, reason)
        assert stored[(model, reason)] == count, (model, reason, stored)
    assert sample_sum(samples, "attnserve_requests_total", model=HELD, code="UNAVAILABLE") == ROUNDS * REJECTED_PER_ROUND
    assert sample_sum(samples, "attnserve_requests_total", model=SAGAN, code="INVALID_ARGUMENT") == ROUNDS * INVALID_PER_ROUND
    others = {k: v for k, v in stored.items() if k not in expected}
    assert all(v == 0 for v in others.values()), others


def test_queue_full_rate_is_positive(live: Live) -> None:
    rate = live.prometheus.value(
        f'sum(rate(attnserve_rejections_total{{model="{HELD}", reason="queue_full"}}[{RATE_WINDOW}]))'
    )
    assert rate is not None and rate > 0, rate
    recorded = live.prometheus.query(f'model_reason:attnserve_rejections:rate5m{{model="{HELD}", reason="queue_full"}}')
    assert len(recorded) == 1 and float(recorded[0]["value"][1]) > 0, recorded


# -- rules ----------------------------------------------------------------------------------------------
def test_every_rule_is_loaded_and_healthy(live: Live) -> None:
    groups = live.prometheus.rule_groups()
    loaded = {rule["name"] for g in groups for rule in g["rules"]}
    declared = {rule.get("record") or rule.get("alert") for rule in load_rules()}
    assert loaded == declared
    unhealthy = [
        (rule["name"], rule["health"], rule.get("lastError"))
        for g in groups
        for rule in g["rules"]
        if rule["health"] != "ok" or rule.get("lastError")
    ]
    assert not unhealthy, unhealthy


RECORDS = [rule["record"] for rule in load_rules() if "record" in rule]


@pytest.mark.parametrize("record", RECORDS)
def test_recording_rule_has_a_value_for_every_model(live: Live, record: str) -> None:
    """All three models had requests, batches, queue waits and rejections: every recorded
    series exists for each, with a finite value (no 0/0)."""
    result = live.prometheus.query(record)
    by_model: dict[str, list[dict]] = {}
    for series in result:
        by_model.setdefault(series["metric"].get("model", ""), []).append(series)
    assert set(by_model) == set(MODELS), f"{record}: models {sorted(by_model)}: {result}"
    for model, series in by_model.items():
        assert finite(series), f"{record}{{model={model!r}}} is not finite: {series}"


def test_queue_full_alert_is_pending_for_the_overflowing_model(live: Live) -> None:
    active = {(a["labels"]["alertname"], a["labels"].get("model")): a["state"] for a in live.prometheus.alerts()}
    assert active.get(("AttnserveQueueFullRejections", HELD)) in {"pending", "firing"}, active
    for name in ("AttnserveInstanceDown", "AttnserveTargetMissing", "AttnserveModelNotReady", "AttnserveGpuMemoryHigh"):
        assert not [key for key in active if key[0] == name], active


# -- dashboard ---------------------------------------------------------------------------------------------
DASHBOARD = load_dashboard()
TARGETS = dashboard_targets(DASHBOARD)


def _concrete(expr: str, live: Live) -> str:
    """Grafana's variables as Grafana fills them with every model and this instance selected."""
    values = {
        "model": "(" + "|".join(MODELS) + ")",
        "instance": re.escape(live.instance).replace("\\", "\\\\"),  # a regex inside a PromQL string
        "__rate_interval": RATE_WINDOW,
        "__interval": "1s",
        "__range": RATE_WINDOW,
    }

    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"no value for dashboard variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


def _gpu_series_exported(live: Live) -> bool:
    return any(name.startswith("attnserve_gpu_") for name, _ in server_samples(live.server))


@pytest.mark.parametrize("panel, target", TARGETS, ids=[f"{p['title']}-{t['refId']}" for p, t in TARGETS])
def test_dashboard_query(live: Live, panel: dict, target: dict) -> None:
    """Each panel's query, with concrete variables, returns finite data carrying its legend's
    labels. The GPU panels have no data on a host without a GPU (the server exports no GPU
    series there): for them a successful query with an empty result proves the query valid."""
    expr = _concrete(target["expr"], live)
    result = live.prometheus.query(expr)  # fails on a PromQL error
    if "attnserve_gpu_" in expr and not _gpu_series_exported(live):
        assert result == [], f"{panel['title']!r}: GPU data without GPU series on /metrics: {result}"
        return
    assert result, f"{panel['title']!r}: no data for {expr}"
    assert finite(result), f"{panel['title']!r}: only NaN/Inf for {expr}: {result}"
    wanted = legend_labels(target.get("legendFormat", ""))
    for series in result:
        missing = wanted - set(series["metric"])
        assert not missing, f"{panel['title']!r}: legend needs {missing}, query keeps {sorted(series['metric'])}"


def test_dashboard_variables_list_this_instance_and_every_model(live: Live) -> None:
    found = {}
    for variable in DASHBOARD["templating"]["list"]:
        match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", variable["definition"])
        assert match, f"unexpected variable query {variable['definition']!r}"
        found[variable["name"]] = set(live.prometheus.api(f"label/{match[2]}/values", **{"match[]": match[1]}))
    assert found == {"instance": {live.instance}, "model": set(MODELS)}


def test_panels_agree_with_the_server(live: Live) -> None:
    """Spot check of values, not just presence: the models-not-ready stat is 0, one instance is
    up, and the error-ratio stat is positive (queue_full refusals are UNAVAILABLE)."""
    by_title = {p["title"]: t for p, t in TARGETS}
    assert live.prometheus.value(_concrete(by_title["Models not ready"]["expr"], live)) == 0
    assert live.prometheus.value(_concrete(by_title["Instances up"]["expr"], live)) == 1
    ratio = live.prometheus.value(_concrete(by_title["Server error ratio"]["expr"], live))
    assert ratio is not None and 0 < ratio < 1, ratio


# -- shutdown (stops the server: keep last) ------------------------------------------------------------------
def test_sigterm_takes_the_target_down(live: Live) -> None:
    live.server.terminate()
    assert live.server.wait(60) == 0, live.server.log[-3000:]
    selector = f'up{{job="attnserve", instance="{live.instance}"}}'
    live.prometheus.wait_for(selector, lambda r: sample_values(r) == [0.0], "the next scrape to fail")
    poll(
        live.prometheus.alerts,
        lambda alerts: any(a["labels"]["alertname"] == "AttnserveInstanceDown" for a in alerts),
        "AttnserveInstanceDown to become pending",
    )
