"""The traffic of test_live_scrape.py and how it waits for Prometheus to see it.

``HELD``'s copy of the model repository is edited (``hold_one``) so that a 1-row request stays
queued until it is cancelled while every other request to it is refused with UNAVAILABLE
(queue_full); ``traffic_round`` sends OK requests to every model, wrong-shape requests and
one such overflow. ``wait_until_scraped`` and ``wait_until_rules_evaluated`` poll Prometheus
until it holds the server's own counters and has evaluated every rule group after that.
"""

from __future__ import annotations

import queue
import re
import time
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
from tests.conftest import ServerProcess
from tests.deploy.conftest import Prometheus, poll, sample_values
from tests.deploy.helpers import PROMETHEUS_CONFIG, RULES
from tests.integration.support import (
    ENCODER,
    HOLD_US,
    MODELS,
    SAGAN,
    SECNN,
    infer_inputs,
    message_of,
    sample_inputs,
    wait_for_the_delay,
    status_of,
)

HELD = SECNN  # the model whose queue the test fills
REJECTED_PER_ROUND = 3  # requests refused (queue_full) while the held one waits
INVALID_PER_ROUND = 2  # wrong-shape requests to SAGAN
ROUNDS = 2
# Counters compared between /metrics and Prometheus to know a scrape saw the latest traffic.
CONVERGENCE = ("attnserve_requests_total", "attnserve_rejections_total", "attnserve_inferences_total")


def hold_one(config: mc.ModelConfig) -> None:
    db = config.dynamic_batching
    db.max_queue_delay_microseconds = HOLD_US
    wait_for_the_delay(config)
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


def server_samples(server: ServerProcess) -> dict[tuple[str, frozenset], float]:
    """Every sample of the server's /metrics, read once: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(server.metrics_text())
        for sample in family.samples
    }


def sample_sum(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
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
    before = server_samples(server)
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
        sample_sum(before, "attnserve_requests_total", model=HELD, code="CANCELLED") + 1,
        sample_sum(before, "attnserve_rejections_total", model=HELD, reason="cancelled") + 1,
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
    # OK traffic to every served model, so every per-model series and rule has a value.
    for model in MODELS:
        if model != HELD:
            send_ok(live, model, 2 if model == ENCODER else 1)
    send_ok(live, HELD, 2)  # a preferred batch size: runs at once
    for _ in range(INVALID_PER_ROUND):
        send_invalid(live)
    overflow(live)


def wait_until_scraped(live: Live) -> float:
    """Wait until Prometheus holds the server's current counters; returns when it did (Unix s)."""
    now = server_samples(live.server)
    for name in CONVERGENCE:
        expected = sample_sum(now, name)
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
