"""What a scenario run (runner.py) and the soak (soak.py) share: their options, the progress
bar, the sweeps that drive a running server over concurrency levels (the load generator,
perf_analyzer) with the server's CPU time, and the results' bookkeeping.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from bench import machine, perf_analyzer
from bench.ceiling import Batch1Reference
from bench.loadgen import LevelResult, Payload, run_level
from bench.scenarios import Target
from bench.server import REPO_ROOT, ManagedProcess
from bench.workload import Workload


@dataclass
class Options:
    out: Path = REPO_ROOT / "bench" / "results"
    cache: Path = REPO_ROOT / "bench" / ".cache"
    provider: str = "cpu"  # resolved: cpu or cuda
    duration_s: float = 10.0
    warmup_s: float = 2.0
    concurrency: tuple[int, ...] | None = None  # overrides the scenario's sweep
    drivers: tuple[str, ...] | None = None  # restricts the scenario's drivers
    pool: int = 256
    check_requests: int = 8
    ceiling_s: float = 3.0
    reference_s: float = 2.0  # in-process batch 1 before and after each c=1 level
    benchmark_max_batch: int = 16
    perf: perf_analyzer.Settings = field(default_factory=perf_analyzer.Settings)
    peer: bool = True
    profile: bool = False
    rebuild: bool = False
    note: str = ""
    seed: int = 0
    server_flags: tuple[str, ...] = ()
    soak_concurrency: int = 8
    default_repository: Path | None = None  # use this instead of exporting repo-default


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Progress:
    """One bar per scenario, counted in steps (a ceiling batch size, a concurrency level)."""

    def __init__(self, name: str, total: int) -> None:
        self.bar = tqdm(total=total, desc=name, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.step = ""

    def start(self, step: str) -> None:
        self.step = step
        self.bar.set_postfix_str(step)

    def tick(self, seconds: float) -> None:
        if int(seconds) != getattr(self, "_last", None):
            self._last = int(seconds)
            self.bar.set_postfix_str(f"{self.step} {int(seconds):3d}s")

    def done(self, result: str = "") -> None:
        self.bar.update(1)
        if result:
            self.bar.set_postfix_str(f"{self.step}: {result}")

    def close(self) -> None:
        self.bar.close()


def short(level: LevelResult) -> str:
    p99 = f"{level.p99_ms:.1f}" if level.p99_ms is not None else "-"
    return f"{level.throughput_rps:.0f} req/s p99 {p99} ms"


# -- drivers -------------------------------------------------------------------------------------
def sweep_loadgen(url: str, payloads: list[Payload], levels: tuple[int, ...], opts: Options,
                  proc: ManagedProcess, progress: Progress, name: str,
                  reference: Batch1Reference | None = None) -> list[dict]:
    out = []
    for concurrency in levels:
        progress.start(f"{name} c={concurrency}")

        def measure() -> LevelResult:
            cpu0, t0 = proc.stats.cpu(), time.monotonic()
            level = asyncio.run(run_level(url, payloads, concurrency, warmup_s=opts.warmup_s,
                                          duration_s=opts.duration_s, on_tick=progress.tick))
            server_cpu(level, proc, cpu0, t0)
            return level

        level = _bracketed(measure, concurrency, reference)
        out.append(level.to_dict())
        progress.done(short(level))
    return out


def _bracketed(measure: Callable[[], LevelResult], concurrency: int, reference: Batch1Reference | None) -> LevelResult:
    """The c=1 level measured between two in-process batch-1 samples (see Batch1Reference)."""
    if reference is None or concurrency != 1:
        return measure()
    level, ref = reference.bracket(measure)
    level.extra["inprocess_batch1"] = ref
    return level


def sweep_perf_analyzer(url: str, workload: Workload, samples: list[dict], levels: tuple[int, ...], opts: Options,
                        proc: ManagedProcess, progress: Progress, work: Path,
                        reference: Batch1Reference | None = None) -> list[dict]:
    binary, env = perf_analyzer.locate()
    data = perf_analyzer.write_input_data(work / f"{workload.name}.input.json", samples)
    out = []
    for concurrency in levels:
        progress.start(f"perf_analyzer c={concurrency}")

        def measure() -> LevelResult:
            cpu0, t0 = proc.stats.cpu(), time.monotonic()
            level = perf_analyzer.run_level(binary, env, url, workload.name, concurrency, data,
                                            work / f"perf_analyzer_c{concurrency}.csv", opts.perf)
            server_cpu(level, proc, cpu0, t0)
            return level

        level = _bracketed(measure, concurrency, reference)
        out.append(level.to_dict())
        progress.done(short(level))
    return out


def server_cpu(level: LevelResult, proc: ManagedProcess, cpu0: float | None, t0: float) -> None:
    cpu1 = proc.stats.cpu()
    if cpu0 is not None and cpu1 is not None:
        level.server_cpu_s = round(cpu1 - cpu0, 3)
        level.extra["server_cores"] = round((cpu1 - cpu0) / max(1e-9, time.monotonic() - t0), 3)
    if level.client_cpu_s is not None:
        level.extra["client_cores"] = round(level.client_cpu_s / level.duration_s, 3)


# -- a run's results ---------------------------------------------------------------------------
def fresh_workdir(opts: Options, name: str) -> Path:
    """``<cache>/runs/<name>``, emptied: the logs and files of this run only."""
    work = opts.cache / "runs" / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


@contextmanager
def recording_failure(results: dict, progress: Progress) -> Iterator[None]:
    """A failing run is reported in its results (and --all goes on); the bar is closed either way."""
    try:
        yield
    except Exception as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        results["traceback"] = traceback.format_exc()
    finally:
        progress.close()


def finish(results: dict, targets: Iterable[Target]) -> dict:
    """Stamp the end of the run and evaluate its targets."""
    results["finished_at"] = now()
    results["machine"]["load_average_end"] = machine.load_average()
    results["targets"] = [row for t in targets for row in t.evaluate(results)]
    return results


def rss_samples_mib(samples: list[tuple[float, int]]) -> list[tuple[float, float]]:
    """(seconds, bytes) RSS samples as (seconds, MiB), rounded for the results file."""
    return [(round(t, 1), round(b / 2**20, 1)) for t, b in samples]
