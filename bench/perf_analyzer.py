"""Triton's perf_analyzer as a second, independent load generator (a C++ client).

One perf_analyzer run per concurrency level (its ``--concurrency-range`` steps linearly; the
sweep here doubles), each writing its CSV (``-f``): throughput, p50/p90/p95/p99 in
microseconds, and the server-side split it reads back through ModelStatistics (queue, compute
input / infer / output). Inputs are the same random requests the asyncio load generator sends
(``--input-data`` JSON, one entry per request, each with its own shape, so token sequences
keep their ragged lengths). The binary needs ``libb64.so.0d`` (Debian libb64-0d) and
``libcudart.so.12`` (PyPI nvidia-cuda-runtime-cu12) even without a GPU.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.loadgen import LevelResult


# A --stability-percentage that any three windows meet (windows are compared on throughput
# and average latency; 100% still fails when one window's latency doubles on a busy machine).
ANY_SPREAD = 1000


class Unavailable(RuntimeError):
    """perf_analyzer cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class Settings:
    measurement_ms: int = 5000
    stability_percentage: int = 10
    max_trials: int = 6
    mode: str = "async"  # "sync" (a thread per concurrent request) or "async"
    timeout_s: float | None = None  # default: room for every trial, the retry and start-up

    def timeout(self) -> float:
        return self.timeout_s or self.measurement_ms / 1e3 * (self.max_trials + 6) + 120


def locate() -> tuple[str, dict[str, str]]:
    """(binary, environment); raises Unavailable naming what is missing."""
    binary = os.environ.get("PERF_ANALYZER")
    if not binary:
        beside = Path(sys.executable).parent / "perf_analyzer"
        binary = str(beside) if beside.is_file() else shutil.which("perf_analyzer")
    if not binary:
        raise Unavailable("perf_analyzer not found (pip install 'tritonclient[all]', or set PERF_ANALYZER)")
    env = dict(os.environ)
    cudart = [
        str(Path(p) / "nvidia" / "cuda_runtime" / "lib")
        for p in sys.path
        if (Path(p) / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12").is_file()
    ]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*cudart, env.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
    try:
        probe = subprocess.run([binary, "--version"], capture_output=True, text=True, env=env, timeout=60)
    except OSError as exc:
        raise Unavailable(f"{binary} cannot start: {exc}") from exc
    if "error while loading shared libraries" in probe.stderr:
        raise Unavailable(
            f"perf_analyzer cannot start: {probe.stderr.strip()} "
            "(apt-get install libb64-0d; pip install nvidia-cuda-runtime-cu12)"
        )
    return binary, env


def write_input_data(path: Path, samples: list[dict[str, np.ndarray]]) -> Path:
    """``--input-data`` JSON: one entry per request, each tensor without its batch dim."""
    data = [
        {name: {"content": array[0].ravel().tolist(), "shape": list(array.shape[1:])} for name, array in sample.items()}
        for sample in samples
    ]
    path.write_text(json.dumps({"data": data}), encoding="utf-8")
    return path


def run_level(
    binary: str,
    env: dict[str, str],
    url: str,
    model: str,
    concurrency: int,
    input_data: Path,
    csv_path: Path,
    settings: Settings = Settings(),
) -> LevelResult:
    """One level. perf_analyzer exits 2 when throughput does not settle within its trials (a
    busy machine); the level is then measured again accepting any spread, and marked
    ``unstable`` in ``extra`` (its spread is then whatever the machine gave)."""
    try:
        return _run_once(binary, env, url, model, concurrency, input_data, csv_path, settings)
    except Unstable:
        if settings.stability_percentage >= ANY_SPREAD:
            raise RuntimeError(f"perf_analyzer: no measurement at concurrency {concurrency}") from None
        level = _run_once(binary, env, url, model, concurrency, input_data, csv_path,
                          replace(settings, stability_percentage=ANY_SPREAD, max_trials=3))
        level.extra["unstable"] = True
        return level


class Unstable(RuntimeError):
    pass


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_once(binary, env, url, model, concurrency, input_data: Path, csv_path: Path, settings: Settings) -> LevelResult:
    argv = [
        binary, "-m", model, "-i", "grpc", "-u", url,
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-interval", str(settings.measurement_ms),
        "--stability-percentage", str(settings.stability_percentage),
        "--max-trials", str(settings.max_trials),
        "--input-data", str(input_data),
        "-f", str(csv_path),
    ]
    if settings.mode == "async":
        argv.append("--async")
    csv_path.unlink(missing_ok=True)
    cpu0, t0 = _children_cpu(), time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=settings.timeout(), cwd=csv_path.parent)
    client_cpu, wall = _children_cpu() - cpu0, time.monotonic() - t0
    output = done.stdout + done.stderr
    if "Failed to obtain stable measurement" in output and not csv_path.is_file():
        raise Unstable(output[-500:])
    if done.returncode != 0 or not csv_path.is_file():
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{output[-3000:]}")
    row = parse_csv(csv_path)[concurrency]
    us = lambda key: float(row[key]) / 1e3 if row.get(key) not in (None, "") else None  # noqa: E731
    throughput = float(row["Inferences/Second"])
    return LevelResult(
        concurrency=concurrency,
        duration_s=settings.measurement_ms / 1e3,
        requests=0, rows=0, errors={},
        throughput_rps=throughput,  # one row per request: inferences/s == requests/s
        throughput_rows_s=throughput,
        p50_ms=us("p50 latency"), p90_ms=us("p90 latency"), p95_ms=us("p95 latency"), p99_ms=us("p99 latency"),
        mean_ms=None, max_ms=None,
        client_cpu_s=round(client_cpu, 3),
        extra={
            "client_cores": round(client_cpu / wall, 3) if wall > 0 else None,
            "server_queue_ms": us("Server Queue"),
            "server_compute_input_ms": us("Server Compute Input"),
            "server_compute_infer_ms": us("Server Compute Infer"),
            "server_compute_output_ms": us("Server Compute Output"),
            "unstable": False,
        },
    )


def parse_csv(path: Path) -> dict[int, dict[str, str]]:
    """{concurrency: row} from perf_analyzer's ``-f`` CSV (latencies in microseconds)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return {int(row["Concurrency"]): row for row in csv.DictReader(handle) if row.get("Concurrency")}
