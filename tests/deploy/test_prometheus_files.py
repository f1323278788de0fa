"""Prometheus files: promtool checks the config and rules and runs the rule unit tests (when
installed: apt-get install -y prometheus); the rules use only contract metrics and labels, and
every PromQL expression in deploy/ parses."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.conftest import require, run
from tests.deploy.helpers import (
    ADAPTER_VALUES,
    DEPLOY,
    PROMETHEUS_CONFIG,
    RULE_TESTS,
    RULES,
    STANDARD_SERIES,
    adapter_to_promql,
    contract_label_names,
    contract_series_names,
    dashboard_targets,
    grafana_to_promql,
    load_dashboard,
    load_rules,
    promql_label_names,
    promql_metric_names,
)


@pytest.fixture(scope="module")
def promtool() -> str:
    return require("promtool", "apt-get install -y prometheus")


def test_promtool_check_config(promtool):
    result = run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules(promtool):
    result = run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests(promtool):
    result = run([promtool, "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_cover_every_rule():
    rules = load_rules()
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    alert_cases = [case for t in tests for case in t.get("alert_rule_test", [])]
    exprs = " ".join(case["expr"] for t in tests for case in t.get("promql_expr_test", []))
    for rule in rules:
        if "alert" in rule:
            cases = [c for c in alert_cases if c["alertname"] == rule["alert"]]
            assert any(c.get("exp_alerts") for c in cases), f"{rule['alert']}: no firing case"
            assert any(not c.get("exp_alerts") for c in cases), f"{rule['alert']}: no quiet case"
        elif rule["record"].startswith("model_le:"):
            continue  # bucket rates, exercised through the quantiles built on them
        else:
            assert re.search(re.escape(rule["record"]) + r"(?![\w:])", exprs), (
                f"recording rule {rule['record']} is not tested"
            )


def test_alerts_carry_severity_summary_and_a_runbook_that_exists():
    runbook = (DEPLOY / "README.md").read_text()
    for rule in load_rules():
        if "alert" not in rule:
            continue
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook"] == f"deploy/README.md#{name.lower()}"
        assert re.search(rf"^### {name}$", runbook, re.M), f"no runbook section for {name}"


def test_rules_use_only_contract_metrics_and_labels():
    rules = load_rules()
    recorded = {r["record"] for r in rules if "record" in r}
    allowed = contract_series_names() | STANDARD_SERIES | recorded
    labels = contract_label_names()
    for rule in rules:
        unknown = promql_metric_names(rule["expr"]) - allowed
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: unknown series {unknown}"
        bad = promql_label_names(rule["expr"]) - labels
        assert not bad, f"{rule.get('record') or rule.get('alert')}: unknown labels {bad}"
    for name in recorded:
        assert re.fullmatch(r"[a-z_]+:attnserve_[a-z_]+:[a-z0-9_]+", name), name


def test_recording_rules_cover_latency_quantiles_rate_and_errors():
    recorded = {r["record"] for r in load_rules() if "record" in r}
    for metric in ("request", "queue", "compute_infer"):
        for q in ("p50", "p95", "p99"):
            assert f"model:attnserve_{metric}_duration_seconds:{q}_5m" in recorded
    assert "model:attnserve_requests:rate5m" in recorded
    assert "model:attnserve_request_error_ratio:ratio_rate5m" in recorded


def test_every_promql_expression_parses(promtool, tmp_path):
    """Dashboard, adapter and rule expressions, checked by promtool's parser as recording rules."""
    exprs: list[tuple[str, str]] = []
    for panel, target in dashboard_targets(load_dashboard()):
        exprs.append((f"dashboard {panel['title']!r}", grafana_to_promql(target["expr"])))
    for var in load_dashboard()["templating"]["list"]:
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        inner = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert inner, f"variable {var['name']}: unexpected query {query!r}"
        exprs.append((f"variable {var['name']}", inner.group(1)))
    for rule in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]:
        series = rule["name"]["as"]
        exprs.append((f"adapter {series}", adapter_to_promql(rule["metricsQuery"], series)))
        exprs.append((f"adapter {series} seriesQuery", rule["seriesQuery"]))
    rules = {
        "groups": [{
            "name": "parse",
            "rules": [{"record": f"parse:check_{i}:expr", "expr": e} for i, (_, e) in enumerate(exprs)],
        }]
    }
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr + "\n".join(
        f"{i}: {where}: {e}" for i, (where, e) in enumerate(exprs)
    )


def test_promtool_rejects_a_broken_expression(promtool, tmp_path):
    """The parse check above is only worth something if promtool fails on bad PromQL."""
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [
        {"record": "bad:x:y", "expr": "sum by (model (rate(attnserve_requests_total[5m]))"}]}]}))
    assert run([promtool, "check", "rules", str(path)]).returncode != 0
