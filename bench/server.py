"""Processes under test: the attnserve server (``python -m service serve``) or a peer, each a
subprocess whose output goes to a log file, with its memory and CPU read from /proc.

``ProcessStats`` samples VmRSS from ``/proc/<pid>/status`` on a thread (every ``interval_s``)
and reads the process's CPU seconds from ``/proc/<pid>/stat`` on demand; both include the
children (MLServer runs its model in a worker process).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_LINE = re.compile(r"attnserve ready: grpc=(?P<grpc>\S+) metrics=(?P<metrics>\S+)(?: http=(?P<http>\S+))?")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ServerFailed(RuntimeError):
    pass


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3 of stat(5), utime/stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class ProcessStats:
    """RSS samples of a process tree over time, and its CPU seconds."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)
        self._t0 = time.monotonic()

    def tree(self) -> list[int]:
        return [self.pid, *_children(self.pid)]

    def rss(self) -> int | None:
        values = [rss_bytes(p) for p in self.tree()]
        values = [v for v in values if v is not None]
        return sum(values) if values else None

    def cpu(self) -> float | None:
        values = [cpu_seconds(p) for p in self.tree()]
        values = [v for v in values if v is not None]
        return sum(values) if values else None

    def start(self) -> "ProcessStats":
        self._thread.start()
        return self

    def mark(self) -> float:
        return time.monotonic() - self._t0

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self.rss()
            if value is not None:
                self.samples.append((self.mark(), value))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def summary(self, since_s: float = 0.0) -> dict:
        values = [v for t, v in self.samples if t >= since_s]
        if not values:
            return {}
        mib = lambda b: round(b / 2**20, 1)  # noqa: E731
        return {"first_mib": mib(values[0]), "last_mib": mib(values[-1]), "peak_mib": mib(max(values)), "samples": len(values)}


class ManagedProcess:
    """A subprocess logging to ``log_path``; ``wait_ready`` is supplied by the caller."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None, cwd: Path = REPO_ROOT):
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env if env is not None else os.environ)
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.stats: ProcessStats | None = None

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.stats = ProcessStats(self.proc.pid).start()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM to the process group (the peer's workers too), then SIGKILL if it lingers."""
        if self.stats is not None:
            self.stats.stop()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class AttnServer(ManagedProcess):
    """``python -m service serve`` on loopback with OS-picked ports; ready when it logs so."""

    def __init__(self, repository: Path, log_path: Path, *, provider: str = "cpu", flags: Sequence[str] = ()) -> None:
        argv = [
            sys.executable, "-m", "service", "serve",
            "--model-repository", str(repository),
            # Every port picked by the OS: two servers (or a test run's) never collide on 8000/8001.
            "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
            "--provider", provider, *flags,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSERVE_")}
        env["PYTHONUNBUFFERED"] = "1"
        super().__init__(argv, log_path, env)
        self.url = ""
        self.metrics_url = ""
        self.http_url = ""  # http://127.0.0.1:PORT, "" with --allow-http false

    def wait_ready(self, timeout_s: float = 300.0) -> "AttnServer":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = READY_LINE.search(self.log_text())
            if match:
                self.url = match["grpc"]
                self.metrics_url = "" if match["metrics"] == "off" else match["metrics"]
                self.http_url = "" if match["http"] in (None, "off") else match["http"]
                if "NOT loaded" in self.log_text().split("attnserve ready:", 1)[1].splitlines()[0]:
                    raise ServerFailed(f"a model failed to load:\n{self.tail()}")
                return self
            if not self.alive():
                raise ServerFailed(f"server exited with {self.proc.returncode} before ready:\n{self.tail()}")
            time.sleep(0.1)
        raise ServerFailed(f"server not ready after {timeout_s:.0f}s:\n{self.tail()}")
