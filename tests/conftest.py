"""Fixtures shared by every test tier.

- ``model_repository`` (session): the three default models, exported once per session by the
  real exporter (``python -m export --model-repository DIR``), or the folder named by
  ``ATTNSERVE_TEST_REPOSITORY`` (exported into when it does not hold the three models yet, so
  a developer can keep one between runs; delete it after changing export/, it is not
  re-exported). Treat it as read-only: tests that change files use ``make_repository``.
- ``make_repository`` (function): a copy of it, optionally with only some models and with
  ``config.pbtxt`` edited through the same ``ModelConfig`` proto the server parses.
- ``ServerProcess``: ``python -m service serve`` as a subprocess on loopback, ports picked by
  the OS and learned from its one ``attnserve ready:`` log line.
- ``server`` (session): one server over ``model_repository`` for tests that leave it as they
  found it; ``start_server`` (function): dedicated servers, stopped at the end of the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import pytest
from google.protobuf import text_format

from service.proto.inference import model_config_pb2 as mc

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = (
    "sagan_generator", "se_cnn_classifier", "transformer_encoder", "cbam_classifier", "stn_classifier",
    "sasa_classifier",
)
REPOSITORY_ENV = "ATTNSERVE_TEST_REPOSITORY"
# service/app.py logs exactly one of these once every model has loaded (or failed to).
READY_LINE = re.compile(r"attnserve ready: grpc=(?P<grpc>\S+) metrics=(?P<metrics>\S+)(?: http=(?P<http>\S+))?")
READY_TIMEOUT_S = 120.0  # loading is ~1 s; the margin is for a machine busy with other work
EXPORT_TIMEOUT_S = 900.0


# -- model repository ----------------------------------------------------------------------------
def _holds_models(root: Path, models: Iterable[str] = DEFAULT_MODELS) -> bool:
    return all((root / m / "config.pbtxt").is_file() and (root / m / "1" / "model.onnx").is_file() for m in models)


def export_repository(destination: Path) -> Path:
    """Run the real exporter (a subprocess, as an operator would) into ``destination``."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip(f"exporting models needs torch (the export extra); or set {REPOSITORY_ENV} to a repository")
    done = subprocess.run(
        [sys.executable, "-m", "export", "--model-repository", str(destination)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S,
    )
    if done.returncode != 0 or not _holds_models(destination):
        pytest.fail(
            f"python -m export --model-repository {destination} exited {done.returncode}\n"
            f"--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}",
            pytrace=False,
        )
    return destination


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get(REPOSITORY_ENV)
    if given:
        root = Path(given).resolve()
        if not _holds_models(root):
            root.mkdir(parents=True, exist_ok=True)
            export_repository(root)
        return root
    return export_repository(tmp_path_factory.mktemp("model_repository"))


def read_model_config(model_dir: Path) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(encoding="utf-8"), config)
    return config


def write_model_config(model_dir: Path, config: mc.ModelConfig) -> None:
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")


ConfigEdit = Callable[[mc.ModelConfig], None]


def copy_repository(
    source: Path,
    destination: Path,
    models: Iterable[str] = DEFAULT_MODELS,
    edits: Mapping[str, ConfigEdit] | None = None,
) -> Path:
    """Copy ``models`` of ``source`` into ``destination``; ``edits[name](config)`` edits in place."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in models:
        shutil.copytree(source / name, destination / name)
        edit = (edits or {}).get(name)
        if edit is not None:
            config = read_model_config(destination / name)
            edit(config)
            write_model_config(destination / name, config)
    return destination


@pytest.fixture
def make_repository(model_repository: Path, tmp_path: Path) -> Callable[..., Path]:
    """``make_repository(models=(...), edits={name: fn(config)})`` -> a fresh copy."""
    count = 0

    def make(models: Iterable[str] = DEFAULT_MODELS, edits: Mapping[str, ConfigEdit] | None = None) -> Path:
        nonlocal count
        count += 1
        return copy_repository(model_repository, tmp_path / f"repository-{count}", models, edits)

    return make


# -- server process -----------------------------------------------------------------------------
class ServerNotReady(AssertionError):
    pass


class ServerProcess:
    """``python -m service serve`` on loopback with OS-picked ports.

    Output (stdout and stderr together) is read by a thread into ``lines``; ``wait_for_log``
    blocks on that, so tests order themselves on what the server says, not on sleeps.
    """

    def __init__(self, repository: Path, *flags: str, env: Mapping[str, str] | None = None) -> None:
        self.repository = Path(repository)
        self.flags = tuple(flags)
        self.argv = [
            sys.executable, "-m", "service", "serve",
            "--model-repository", str(self.repository),
            "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
            "--provider", "cpu", *self.flags,
        ]
        # The server reads ATTNSERVE_* settings; a developer's own must not leak into tests.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSERVE_")}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.update(env or {})
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.url = ""  # HOST:PORT of the gRPC server, for tritonclient
        self.metrics_url = ""  # http://HOST:PORT/metrics ("" when metrics are off)
        self.http_url = ""  # http(s)://HOST:PORT of the KServe v2 REST port ("" when HTTP is off)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = READY_TIMEOUT_S) -> "ServerProcess":
        self._proc = subprocess.Popen(
            self.argv, cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"server-log-{self._proc.pid}", daemon=True)
        self._reader.start()
        try:
            line = self.wait_for_log(READY_LINE, timeout)
        except ServerNotReady:
            self.kill()
            raise
        match = READY_LINE.search(line)
        assert match is not None
        self.url = match["grpc"]
        self.metrics_url = "" if match["metrics"] == "off" else match["metrics"]
        self.http_url = "" if match["http"] in (None, "off") else match["http"]
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 60.0, *, start: int = 0) -> str:
        """The first output line from index ``start`` on matching ``pattern`` (regex or substring)."""
        matches = pattern.search if isinstance(pattern, re.Pattern) else (lambda line: pattern in line)
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if matches(line):
                        return line
                seen = max(seen, len(self.lines))
                if self._eof:
                    raise ServerNotReady(
                        f"server exited (code {self._exit_code()}) before logging {pattern!r}\n{self._tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServerNotReady(f"no {pattern!r} in the server log after {timeout:.0f}s\n{self._tail()}")
                self._changed.wait(remaining)

    def _exit_code(self) -> int | None:
        """After end of output the process is exiting; give it a moment to be reaped."""
        assert self._proc is not None
        try:
            return self._proc.wait(10)
        except subprocess.TimeoutExpired:
            return None

    def _tail(self, lines: int = 80) -> str:
        return "--- server log (" + " ".join(self.argv) + ") ---\n" + "\n".join(self.lines[-lines:])

    def signal(self, sig: int) -> None:
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.send_signal(sig)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()

    def wait(self, timeout: float = 60.0) -> int:
        """Exit code; raises subprocess.TimeoutExpired (with the log) if still running."""
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"server still running after {timeout:.0f}s\n{self._tail()}") from exc
        if self._reader is not None:
            self._reader.join(10)
        return code

    def stop(self, timeout: float = 60.0) -> int | None:
        """Teardown: SIGTERM, wait, SIGKILL as a last resort."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._reader is not None:
            self._reader.join(10)
        return self._proc.returncode

    # -- observation ----------------------------------------------------------------------------
    def metrics_text(self, timeout: float = 10.0) -> str:
        assert self.metrics_url, "metrics are off for this server"
        with urllib.request.urlopen(self.metrics_url, timeout=timeout) as reply:
            return reply.read().decode("utf-8")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels`` (0 if none)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def __repr__(self) -> str:
        return f"ServerProcess({self.url or 'not started'}, pid={self._proc.pid if self._proc else None})"


@pytest.fixture(scope="session")
def server(model_repository: Path) -> Iterator[ServerProcess]:
    """One server over the default repository, shared by tests that leave it as they found it."""
    process = ServerProcess(model_repository).start()
    yield process
    process.stop()


@pytest.fixture
def start_server(model_repository: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``start_server(*flags, repository=...)`` -> a started server, stopped after the test."""
    started: list[ServerProcess] = []

    def start(*flags: str, repository: Path | None = None, env: Mapping[str, str] | None = None) -> ServerProcess:
        process = ServerProcess(repository or model_repository, *flags, env=env)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
