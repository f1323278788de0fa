"""Runs one scenario end to end: build, measure the ceiling, serve, check, load, report.

1. the base repository is exported if missing, and the scenario's own repository is built
   (config edits applied, ONNX files symlinked);
2. the ceiling: in-process ONNX Runtime on the same file with the server's session settings,
   at every batch size (before the server starts, so nothing else runs);
3. the server starts (``python -m service serve``), its RSS sampled all along;
4. checks: a few requests compared with in-process ORT; the attnserve API answered;
5. the drivers sweep the concurrency levels (the load generator, its API surface,
   perf_analyzer), py-spy recording the server during the load generator's sweep if asked;
6. the server stops; the peer (MLServer) starts on the same ONNX file, is checked the same
   way and driven by the same load generator with the same requests;
7. the targets are evaluated and the results written (JSON, Markdown, PNG).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench import ceiling, machine, perf_analyzer, repos
from bench.check import CheckFailed, verify_api, verify_v2
from bench.loadgen import ApiSurface, LevelResult, Payload, V2Surface, run_level
from bench.scenarios import DEFAULT_MODELS, DRIVER_LABELS, RSS_500, SOAK_FLAT, Scenario
from bench.server import AttnServer, ManagedProcess, REPO_ROOT
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


def _now() -> str:
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


def _short(level: LevelResult) -> str:
    p99 = f"{level.p99_ms:.1f}" if level.p99_ms is not None else "-"
    return f"{level.throughput_rps:.0f} req/s p99 {p99} ms"


# -- drivers -------------------------------------------------------------------------------------
def sweep_loadgen(url: str, payloads: list[Payload], levels: tuple[int, ...], opts: Options,
                  proc: ManagedProcess, progress: Progress, name: str) -> list[dict]:
    out = []
    for concurrency in levels:
        progress.start(f"{name} c={concurrency}")
        cpu0, t0 = proc.stats.cpu(), time.monotonic()
        level = asyncio.run(run_level(url, payloads, concurrency, warmup_s=opts.warmup_s,
                                      duration_s=opts.duration_s, on_tick=progress.tick))
        _server_cpu(level, proc, cpu0, t0)
        out.append(level.to_dict())
        progress.done(_short(level))
    return out


def sweep_perf_analyzer(url: str, workload: Workload, samples: list[dict], levels: tuple[int, ...], opts: Options,
                        proc: ManagedProcess, progress: Progress, work: Path) -> list[dict]:
    binary, env = perf_analyzer.locate()
    data = perf_analyzer.write_input_data(work / f"{workload.name}.input.json", samples)
    out = []
    for concurrency in levels:
        progress.start(f"perf_analyzer c={concurrency}")
        cpu0, t0 = proc.stats.cpu(), time.monotonic()
        level = perf_analyzer.run_level(binary, env, url, workload.name, concurrency, data,
                                        work / f"perf_analyzer_c{concurrency}.csv", opts.perf)
        _server_cpu(level, proc, cpu0, t0)
        out.append(level.to_dict())
        progress.done(_short(level))
    return out


def _server_cpu(level: LevelResult, proc: ManagedProcess, cpu0: float | None, t0: float) -> None:
    cpu1 = proc.stats.cpu()
    if cpu0 is not None and cpu1 is not None:
        level.server_cpu_s = round(cpu1 - cpu0, 3)
        level.extra["server_cores"] = round((cpu1 - cpu0) / max(1e-9, time.monotonic() - t0), 3)
    if level.client_cpu_s is not None:
        level.extra["client_cores"] = round(level.client_cpu_s / level.duration_s, 3)


# -- profiling -----------------------------------------------------------------------------------
def start_profiler(pid: int, svg: Path, log: Path) -> subprocess.Popen | None:
    """py-spy sampling the server (100 Hz, without pausing it) until stop_profiler."""
    beside = Path(sys.executable).parent / "py-spy"
    binary = str(beside) if beside.is_file() else shutil.which("py-spy")
    if binary is None:
        print("[bench] --profile: py-spy not found (pip install py-spy); not profiling", file=sys.stderr)
        return None
    svg.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [binary, "record", "-o", str(svg), "--pid", str(pid), "--rate", "100", "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"),
    )


def stop_profiler(profiler: subprocess.Popen | None) -> None:
    if profiler is None:
        return
    profiler.send_signal(signal.SIGINT)  # py-spy writes the flame graph on SIGINT
    try:
        profiler.wait(60)
    except subprocess.TimeoutExpired:
        profiler.kill()


# -- one scenario --------------------------------------------------------------------------------
def run_scenario(scenario: Scenario, opts: Options) -> dict:
    if scenario.time_scale != 1.0:
        opts = dataclasses.replace(
            opts, duration_s=opts.duration_s * scenario.time_scale, warmup_s=opts.warmup_s * scenario.time_scale,
            perf=dataclasses.replace(opts.perf, measurement_ms=int(opts.perf.measurement_ms * scenario.time_scale)),
        )
    levels = opts.concurrency or scenario.concurrency
    drivers = [d for d in scenario.drivers if opts.drivers is None or d in opts.drivers]
    if "peer" in drivers and not opts.peer:
        drivers.remove("peer")
    work = opts.cache / "runs" / scenario.name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    results: dict = {
        "scenario": scenario.describe(), "started_at": _now(), "note": opts.note,
        "machine": machine.describe(opts.provider),
        "settings": {
            "duration_s": opts.duration_s, "warmup_s": opts.warmup_s, "concurrency": list(levels),
            "request_pool": opts.pool, "ceiling_s_per_batch_size": opts.ceiling_s,
            "perf_analyzer": vars(opts.perf), "server_flags": list(opts.server_flags),
            "benchmark_max_batch_size": opts.benchmark_max_batch if scenario.base == "benchmark" else None,
        },
        "drivers": {}, "skipped": {}, "checks": {},
    }
    steps = 2 + len(ceiling.batch_sizes(64)) + len(levels) * len(drivers) + ("peer" in drivers)
    progress = Progress(scenario.name, steps)
    try:
        _run(scenario, opts, levels, drivers, work, results, progress)
    except Exception as exc:  # a broken scenario is reported, and --all goes on
        results["error"] = f"{type(exc).__name__}: {exc}"
        results["traceback"] = traceback.format_exc()
    finally:
        progress.close()
    results["finished_at"] = _now()
    results["machine"]["load_average_end"] = machine.load_average()
    results["targets"] = [row for t in scenario.targets for row in t.evaluate(results)]
    return results


def _run(scenario: Scenario, opts: Options, levels, drivers, work: Path, results: dict, progress: Progress) -> None:
    progress.start("repository")
    base = repos.ensure_base(opts.cache, scenario.base, scenario.serve_models, opts.benchmark_max_batch, opts.rebuild,
                             given=opts.default_repository if scenario.base == "default" else None)
    edits = {scenario.model: scenario.edit} if scenario.edit else None
    repository = repos.build_scenario_repository(opts.cache, scenario.name, base, scenario.serve_models, edits)
    workload = Workload(repository / scenario.model)
    model_path = (repository / scenario.model / "1" / "model.onnx").resolve()
    results["repository"] = str(repository)
    results["model"] = workload.describe() | {"onnx": str(model_path), "onnx_mib": round(model_path.stat().st_size / 2**20, 1)}
    rng = np.random.default_rng(opts.seed)
    samples = workload.pool(opts.pool, rng)
    v2_payloads = V2Surface().payloads_from(workload, samples)
    progress.done()

    # The ceiling, before anything else runs.
    sizes = ceiling.batch_sizes(workload.spec.max_batch_size)
    progress.bar.total = progress.bar.total - len(ceiling.batch_sizes(64)) + len(sizes)
    points, settings = ceiling.measure(
        workload, model_path, samples, provider=opts.provider, sizes=sizes, duration_s=opts.ceiling_s,
        intra_op_threads=_flag_int(opts.server_flags, "--intra-op-threads"),
        on_step=progress.start, on_done=lambda p: progress.done(f"{p.throughput_rows_s:.0f} rows/s"), seed=opts.seed + 1,
    )
    best = ceiling.best(points)
    results["ceiling"] = {"points": [p.to_dict() for p in points], "settings": settings,
                          "best": best.to_dict() if best else None}

    # The server.
    progress.start("server start")
    server = AttnServer(repository, work / "server.log", provider=opts.provider, flags=opts.server_flags).start()
    try:
        server.wait_ready()
        time.sleep(1.0)  # let the RSS settle after warm-up
        results["server"] = {"pid": server.pid, "url": server.url, "argv": server.argv,
                             "rss_after_ready_mib": round((server.stats.rss() or 0) / 2**20, 1)}
        results["checks"]["server_v2"] = verify_v2(server.url, workload.name, model_path, samples[: opts.check_requests])
        api_payloads = None
        if "api" in drivers:
            api_payloads = ApiSurface().payloads(workload, opts.pool, np.random.default_rng(opts.seed + 2))
            try:
                results["checks"]["server_api"] = verify_api(server.url, api_payloads[: opts.check_requests])
            except Exception as exc:  # UNIMPLEMENTED on a server without the API
                results["skipped"]["api"] = f"attnserve API check failed: {exc}"
                drivers.remove("api")
                progress.bar.total -= len(levels)
        progress.done()
        for driver in [d for d in drivers if d != "peer"]:
            try:
                levels_out = _drive(driver, scenario, server, workload, samples, v2_payloads, api_payloads,
                                    levels, opts, progress, work)
            except (perf_analyzer.Unavailable, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                # One driver failing (perf_analyzer missing or never settling) leaves the others.
                results["skipped"][driver] = f"{type(exc).__name__}: {exc}"
                continue
            results["drivers"][driver] = {"label": DRIVER_LABELS[driver], "levels": levels_out}
    finally:
        server.stop()
        results.setdefault("server", {})["rss"] = server.stats.summary()
        results["server"]["rss_samples"] = [(round(t, 1), round(b / 2**20, 1)) for t, b in server.stats.samples]
        results["server"]["exit_code"] = server.proc.returncode if server.proc else None
        if server.proc and server.proc.returncode not in (0, None):
            results["server"]["log_tail"] = server.tail()

    if "peer" in drivers:
        _run_peer(workload, model_path, samples, v2_payloads, levels, opts, work, results, progress)


def _drive(driver, scenario, server, workload, samples, v2_payloads, api_payloads, levels, opts, progress, work):
    if driver == "loadgen":
        profiler = start_profiler(server.pid, opts.out / f"{scenario.name}.svg", work / "py-spy.log") if opts.profile else None
        try:
            return sweep_loadgen(server.url, v2_payloads, levels, opts, server, progress, "loadgen")
        finally:
            stop_profiler(profiler)
    if driver == "api":
        return sweep_loadgen(server.url, api_payloads, levels, opts, server, progress, "api")
    if driver == "perf_analyzer":
        return sweep_perf_analyzer(server.url, workload, samples[:64], levels, opts, server, progress, work)
    raise ValueError(f"unknown driver {driver!r}")


def _run_peer(workload, model_path, samples, payloads, levels, opts, work, results, progress) -> None:
    from bench.peer import launch

    progress.start("peer start")
    try:
        venv = launch.ensure_venv()
    except Exception as exc:
        results["skipped"]["peer"] = f"no peer environment: {exc}"
        return
    batching = workload.describe()["dynamic_batching"] or {}
    threads = ceiling.server_threads(1, _flag_int(opts.server_flags, "--intra-op-threads"))
    delay_s = batching.get("max_queue_delay_microseconds", 0) / 1e6
    folder, port = launch.write_settings(
        work / "peer", workload.name, model_path, max_batch_size=workload.spec.max_batch_size,
        max_batch_time_s=delay_s, intra_op_threads=threads,
    )
    peer = launch.PeerServer(folder, port, workload.name, work / "peer.log", venv).start()
    try:
        peer.wait_ready()
        results["peer"] = {
            "server": f"MLServer {launch.MLSERVER_VERSION}", "runtime": "bench/peer/runtime.py (ONNX Runtime, attnserve's session options)",
            "max_batch_size": workload.spec.max_batch_size, "max_batch_time_s": delay_s,
            "intra_op_threads": threads, "parallel_workers": 1,
            "rss_after_ready_mib": round((peer.stats.rss() or 0) / 2**20, 1),
        }
        results["checks"]["peer_v2"] = verify_v2(peer.url, workload.name, model_path, samples[: opts.check_requests])
        progress.done()
        levels_out = sweep_loadgen(peer.url, payloads, levels, opts, peer, progress, "peer")
        results["drivers"]["peer"] = {"label": DRIVER_LABELS["peer"], "levels": levels_out}
    except CheckFailed:
        raise
    except Exception as exc:
        results["skipped"]["peer"] = f"{type(exc).__name__}: {exc}"
    finally:
        peer.stop()
        results.setdefault("peer", {})["rss"] = peer.stats.summary()


def _flag_int(flags: tuple[str, ...], name: str) -> int:
    for i, flag in enumerate(flags):
        if flag == name and i + 1 < len(flags):
            return int(flags[i + 1])
        if flag.startswith(name + "="):
            return int(flag.split("=", 1)[1])
    return 0


# -- soak ----------------------------------------------------------------------------------------
def run_soak(seconds: float, opts: Options) -> dict:
    """The three default models under mixed load for ``seconds``; VmRSS sampled twice a second."""
    work = opts.cache / "runs" / "soak"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    warmup = min(60.0, max(1.0, seconds * 0.1))
    results: dict = {
        "scenario": {"name": "soak", "description": f"three default models, mixed v2 load at c={opts.soak_concurrency}",
                     "base": "default", "model": "all", "serve_models": list(DEFAULT_MODELS), "config": "as exported",
                     "concurrency": [opts.soak_concurrency], "drivers": ["loadgen"]},
        "started_at": _now(), "note": opts.note, "machine": machine.describe(opts.provider),
        "settings": {"soak_s": seconds, "warmup_s": warmup, "concurrency": [opts.soak_concurrency], "rss_interval_s": 0.5},
        "drivers": {}, "skipped": {}, "checks": {},
    }
    progress = Progress("soak", 3)
    try:
        base = repos.ensure_base(opts.cache, "default", DEFAULT_MODELS, opts.benchmark_max_batch, opts.rebuild,
                                 given=opts.default_repository)
        repository = repos.build_scenario_repository(opts.cache, "soak", base, DEFAULT_MODELS)
        rng = np.random.default_rng(opts.seed)
        payloads: list[Payload] = []
        workloads = [Workload(repository / m) for m in DEFAULT_MODELS]
        per_model = [V2Surface().payloads(w, opts.pool, rng) for w in workloads]
        for trio in zip(*per_model):  # interleaved: every caller sends to every model in turn
            payloads.extend(trio)
        results["models"] = {w.name: w.describe() for w in workloads}
        progress.done()
        load_from = 0.0
        server = AttnServer(repository, work / "server.log", provider=opts.provider, flags=opts.server_flags)
        server.start()
        try:
            server.wait_ready()
            for w in workloads:
                results["checks"][f"server_v2_{w.name}"] = verify_v2(
                    server.url, w.name, (repository / w.name / "1" / "model.onnx").resolve(), w.pool(4, rng))
            progress.done()
            progress.start(f"soak {seconds:.0f}s")
            load_from = server.stats.mark()
            level = asyncio.run(run_level(server.url, payloads, opts.soak_concurrency, warmup_s=warmup,
                                          duration_s=seconds, on_tick=progress.tick))
            results["drivers"]["loadgen"] = {"label": DRIVER_LABELS["loadgen"] + ", three models interleaved",
                                             "levels": [level.to_dict()]}
            progress.done(_short(level))
        finally:
            server.stop()
        samples = server.stats.samples
        results["server"] = {"rss": server.stats.summary(),
                             "rss_samples": [(round(t, 1), round(b / 2**20, 1)) for t, b in samples]}
        results["soak"] = soak_growth(samples, start_s=load_from + warmup)
    except Exception as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        results["traceback"] = traceback.format_exc()
    finally:
        progress.close()
    results["finished_at"] = _now()
    results["machine"]["load_average_end"] = machine.load_average()
    results["targets"] = [row for t in (RSS_500, SOAK_FLAT) for row in t.evaluate(results)]
    return results


def soak_growth(samples: list[tuple[float, int]], start_s: float) -> dict:
    """Growth from the first tenth of the window (after warm-up) to the last tenth (medians)."""
    window = [(t, b) for t, b in samples if t >= start_s]
    if len(window) < 10:
        return {"growth_pct": None, "samples": len(window)}
    tenth = max(1, len(window) // 10)
    baseline = float(np.median([b for _, b in window[:tenth]]))
    end = float(np.median([b for _, b in window[-tenth:]]))
    return {
        "baseline_mib": round(baseline / 2**20, 1), "end_mib": round(end / 2**20, 1),
        "peak_mib": round(max(b for _, b in window) / 2**20, 1),
        "growth_pct": round((end - baseline) / baseline * 100, 2),
        "window_s": round(window[-1][0] - window[0][0], 1), "samples": len(window),
    }
