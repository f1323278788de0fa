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

import queue
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from service.proto.inference import model_config_pb2 as mc
from tests.conftest import ServerProcess, copy_repository
from tests.deploy.conftest import Prometheus, finite, poll, sample_values
from tests.deploy.helpers import (
    PROMETHEUS_CONFIG,
    RULES,
    dashboard_targets,
    legend_labels,
    load_dashboard,
    load_rules,
)
from tests.integration.support import ENCODER, MODELS, SAGAN, SECNN, infer_inputs, message_of, sample_inputs, status_of

HELD = SECNN  # the model whose queue the test fills
HOLD_US = 300_000_000  # a held 1-row request never runs because its delay ran out
REJECTED_PER_ROUND = 3  # requests refused (queue_full) while the held one waits
INVALID_PER_ROUND = 2  # wrong-shape requests to SAGAN
ROUNDS = 2
# Grafana's $__rate_interval is at least 4 scrape intervals; here the window covers the whole
# run, so each panel shows what the test sent, not whatever fell into the last few seconds.
RATE_WINDOW = "5m"
# Counters compared between /metrics and Prometheus to know a scrape saw the latest traffic.
CONVERGENCE = ("attnserve_requests_total", "attnserve_rejections_total", "attnserve_inferences_total")


def _hold_one(config: mc.ModelConfig) -> None:
    db = config.dynamic_batching
    db.max_queue_delay_microseconds = HOLD_US
    del db.preferred_batch_size[:]
    db.preferred_batch_size.append(2)
    db.default_queue_policy.max_queue_size = 1


def scrape_config(metrics_address: str) -> dict:
    """deploy/prometheus/prometheus.yml with 1 s intervals and the target on loopback."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    rule_files = [str(PROMETHEUS_CONFIG.parent / pattern) for pattern in config["rule_files"]]
    assert any(RULES.match(pattern) for pattern in rule_files), f"{rule_files} do not load {RULES}"
    config["rule_files"] = rule_files
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "attnserve" in jobs, f"no attnserve job in {PROMETHEUS_CONFIG}"
    for name, job in jobs.items():
        for key in ("scrape_interval", "scrape_timeout"):
            if key in job:
                job[key] = "1s"
        target = metrics_address if name == "attnserve" else "{prometheus}"
        job["static_configs"] = [{"targets": [target]}]
    return config


def _metrics(server: ServerProcess) -> dict[tuple[str, frozenset], float]:
    """Every sample of the server's /metrics, read once: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(server.metrics_text())
        for sample in family.samples
    }


def _sum(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def _rfc3339(stamp: str) -> float:
    """Prometheus's timestamps (nanosecond fractions, 'Z') as Unix seconds."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
    assert match, f"not an RFC 3339 time: {stamp!r}"
    zone = "+00:00" if match[3] == "Z" else match[3]
    return datetime.fromisoformat(match[1] + zone).timestamp() + float("0" + (match[2] or ".0"))


# -- traffic ----------------------------------------------------------------------------------------
@dataclass
class Live:
    server: ServerProcess
    prometheus: Prometheus
    client: grpcclient.InferenceServerClient
    repository: Path
    instance: str
    rng: np.random.Generator


def send_ok(live: Live, model: str, rows: int) -> None:
    arrays = sample_inputs(live.repository, model, rows, live.rng)
    result = live.client.infer(model, infer_inputs(arrays))
    output = result.get_response().outputs[0].name
    assert result.as_numpy(output).shape[0] == rows


def send_invalid(live: Live) -> None:
    arrays = sample_inputs(live.repository, SAGAN, 1, live.rng)
    arrays["z"] = arrays["z"][:, : arrays["z"].shape[1] // 2]  # wrong shape
    with pytest.raises(InferenceServerException) as caught:
        live.client.infer(SAGAN, infer_inputs(arrays))
    assert status_of(caught.value) == "INVALID_ARGUMENT", message_of(caught.value)


def overflow(live: Live) -> None:
    """Hold one request in HELD's queue, get REJECTED_PER_ROUND refusals, cancel the held one."""
    server = live.server
    before = _metrics(server)
    outcome: queue.Queue = queue.Queue()
    held = live.client.async_infer(
        HELD, infer_inputs(sample_inputs(live.repository, HELD, 1, live.rng)),
        callback=lambda result, error: outcome.put((result, error)),
    )
    poll(lambda: server.metric("attnserve_queue_depth", model=HELD), lambda depth: depth == 1, f"{HELD} queue depth 1")
    for _ in range(REJECTED_PER_ROUND):
        with pytest.raises(InferenceServerException) as caught:
            live.client.infer(HELD, infer_inputs(sample_inputs(live.repository, HELD, 1, live.rng)))
        assert status_of(caught.value) == "UNAVAILABLE", message_of(caught.value)
        assert "queue" in message_of(caught.value)
    assert outcome.empty(), "the held request was answered while its queue was held"
    held.cancel()
    result, error = outcome.get(timeout=30)
    assert result is None and error is not None, "the cancelled request was answered"
    expected = (
        0,
        _sum(before, "attnserve_requests_total", model=HELD, code="CANCELLED") + 1,
        _sum(before, "attnserve_rejections_total", model=HELD, reason="cancelled") + 1,
    )
    poll(
        lambda: (
            server.metric("attnserve_queue_depth", model=HELD),
            server.metric("attnserve_requests_total", model=HELD, code="CANCELLED"),
            server.metric("attnserve_rejections_total", model=HELD, reason="cancelled"),
        ),
        lambda seen: seen == expected,
        f"the cancelled request leaving {HELD}'s queue (depth, CANCELLED answers, cancelled rejections)",
    )


def traffic_round(live: Live) -> None:
    send_ok(live, SAGAN, 1)
    send_ok(live, ENCODER, 2)
    send_ok(live, HELD, 2)  # a preferred batch size: runs at once
    for _ in range(INVALID_PER_ROUND):
        send_invalid(live)
    overflow(live)


def wait_until_scraped(live: Live) -> float:
    """Wait until Prometheus holds the server's current counters; returns when it did (Unix s)."""
    now = _metrics(live.server)
    for name in CONVERGENCE:
        expected = _sum(now, name)
        live.prometheus.wait_for(
            f'sum({name}{{job="attnserve"}})',
            lambda result, expected=expected: sample_values(result) == [expected],
            f"Prometheus to scrape {name} == {expected}",
        )
    return time.time()


def wait_until_rules_evaluated(live: Live, after: float) -> None:
    poll(
        live.prometheus.rule_groups,
        lambda groups: bool(groups) and all(_rfc3339(g["lastEvaluation"]) > after for g in groups),
        "every rule group to be evaluated after the last scrape",
    )


@pytest.fixture(scope="module")
def live(model_repository: Path, tmp_path_factory: pytest.TempPathFactory, live_prometheus) -> Iterator[Live]:
    repository = copy_repository(model_repository, tmp_path_factory.mktemp("live_repository"), edits={HELD: _hold_one})
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
    before = _metrics(live.server)
    for n in rows:  # one at a time: each request is its own execution
        send_ok(live, ENCODER, n)
    after = _metrics(live.server)

    def delta(name: str, **labels: str) -> float:
        return _sum(after, name, model=ENCODER, **labels) - _sum(before, name, model=ENCODER, **labels)

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

    count = _sum(after, "attnserve_request_duration_seconds_count", model=ENCODER, surface="v2")
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
    samples = _metrics(live.server)
    stored = {
        (r["metric"]["model"], r["metric"]["reason"]): float(r["value"][1])
        for r in live.prometheus.query('sum by (model, reason) (attnserve_rejections_total{job="attnserve"})')
    }
    for (model, reason), count in expected.items():
        assert _sum(samples, "attnserve_rejections_total", model=model, reason=reason) == count, (model, reason)
        assert stored[(model, reason)] == count, (model, reason, stored)
    assert _sum(samples, "attnserve_requests_total", model=HELD, code="UNAVAILABLE") == ROUNDS * REJECTED_PER_ROUND
    assert _sum(samples, "attnserve_requests_total", model=SAGAN, code="INVALID_ARGUMENT") == ROUNDS * INVALID_PER_ROUND
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
    return any(name.startswith("attnserve_gpu_") for name, _ in _metrics(live.server))


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
