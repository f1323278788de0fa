"""Runs one scenario end to end: build, measure the ceiling, serve, check, load, report.

1. the base repository is exported if missing, and the scenario's own repository is built
   (config edits applied, ONNX files symlinked);
2. the ceiling: in-process ONNX Runtime on the same file with the server's session settings,
   at every batch size (before the server starts, so nothing else runs);
3. the server starts (``python -m service serve``), its RSS sampled all along;
4. checks: a few requests compared with in-process ORT; the attnserve API answered;
5. the drivers sweep the concurrency levels (the load generator, its API surface,
   perf_analyzer), py-spy recording the server during the load generator's sweep if asked;
6. the server stops; the transport floor (bench/floor.py: a grpc.aio server answering the
   real server's answer bytes without doing anything) is driven by the same load generator
   at c=1 and at the top level;
7. the peer (MLServer) starts on the same ONNX file, is checked the same way and driven by
   the same load generator with the same requests;
8. the targets are evaluated and the results written (JSON, Markdown, PNG).

The soak (``--soak``) is bench/soak.py; the options, drivers and bookkeeping both use are in
bench/drivers.py.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np

from bench import ceiling, floor, machine, perf_analyzer, profile, repos
from bench.check import CheckFailed, verify_api, verify_v2
from bench.drivers import (
    Options,
    Progress,
    finish,
    fresh_workdir,
    now,
    recording_failure,
    rss_samples_mib,
    sweep_loadgen,
    sweep_perf_analyzer,
)
from bench.loadgen import ApiSurface, V2Surface
from bench.scenarios import DRIVER_LABELS, Scenario
from bench.server import AttnServer
from bench.workload import Workload


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
    work = fresh_workdir(opts, scenario.name)
    results: dict = {
        "scenario": scenario.describe(), "started_at": now(), "note": opts.note,
        "machine": machine.describe(opts.provider),
        "settings": {
            "duration_s": opts.duration_s, "warmup_s": opts.warmup_s, "concurrency": list(levels),
            "request_pool": opts.pool, "ceiling_s_per_batch_size": opts.ceiling_s,
            "c1_reference_s_before_and_after": opts.reference_s,
            "perf_analyzer": vars(opts.perf), "server_flags": list(opts.server_flags),
            "benchmark_max_batch_size": opts.benchmark_max_batch if scenario.base == "benchmark" else None,
        },
        "drivers": {}, "skipped": {}, "checks": {},
    }
    steps = 2 + len(ceiling.batch_sizes(64)) + len([d for d in drivers if d != "floor"]) * len(levels) + ("peer" in drivers)
    steps += len(floor_levels(levels)) + 1 if "floor" in drivers else 0
    progress = Progress(scenario.name, steps)
    with recording_failure(results, progress):  # a broken scenario is reported, and --all goes on
        _run(scenario, opts, levels, drivers, work, results, progress)
    return finish(results, scenario.targets)


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
    # The c=1 levels are compared with batch 1 measured around them, not minutes earlier.
    reference = ceiling.Batch1Reference(
        workload, model_path, samples, provider=opts.provider, seconds=opts.reference_s,
        intra_op_threads=_flag_int(opts.server_flags, "--intra-op-threads"),
    )

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
        for driver in [d for d in drivers if d not in ("peer", "floor")]:
            try:
                levels_out = _drive(driver, scenario, server, workload, samples, v2_payloads, api_payloads,
                                    levels, opts, progress, work, results, reference)
            except (perf_analyzer.Unavailable, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                # One driver failing (perf_analyzer missing or never settling) leaves the others.
                results["skipped"][driver] = f"{type(exc).__name__}: {exc}"
                continue
            results["drivers"][driver] = {"label": DRIVER_LABELS[driver], "levels": levels_out}
        answer = work / "floor.answer"
        if "floor" in drivers:  # what the floor server will answer: this server's real answer
            try:
                answer.write_bytes(floor.capture_answer(server.url, v2_payloads[0]))
            except grpc.RpcError as exc:
                results["skipped"]["floor"] = f"no answer to copy: {exc.code().name} {exc.details()}"
                drivers.remove("floor")
    finally:
        server.stop()
        results.setdefault("server", {})["rss"] = server.stats.summary()
        results["server"]["rss_samples"] = rss_samples_mib(server.stats.samples)
        results["server"]["exit_code"] = server.proc.returncode if server.proc else None
        if server.proc and server.proc.returncode not in (0, None):
            results["server"]["log_tail"] = server.tail()

    if "floor" in drivers:
        _run_floor(answer, v2_payloads, floor_levels(levels), opts, work, results, progress)
    if "peer" in drivers:
        _run_peer(workload, model_path, samples, v2_payloads, levels, opts, work, results, progress)


def _drive(driver, scenario, server, workload, samples, v2_payloads, api_payloads, levels, opts, progress, work, results,
           reference=None):
    if driver == "loadgen":
        profiler = profile.start(server.pid, opts.out, scenario.name, work) if opts.profile else None
        try:
            return sweep_loadgen(server.url, v2_payloads, levels, opts, server, progress, "loadgen", reference)
        finally:
            profile.stop(profiler)
            summary = profile.write_summary(profiler, f"{scenario.name}, loadgen sweep {list(levels)}")
            if summary is not None:
                results["profile"] = summary
    if driver == "api":
        return sweep_loadgen(server.url, api_payloads, levels, opts, server, progress, "api")
    if driver == "perf_analyzer":
        return sweep_perf_analyzer(server.url, workload, samples[:64], levels, opts, server, progress, work, reference)
    raise ValueError(f"unknown driver {driver!r}")


def floor_levels(levels: tuple[int, ...]) -> tuple[int, ...]:
    """c=1 (the added-latency target's level) and the top level (the throughput one)."""
    return tuple(sorted({min(levels), max(levels)}))


def _run_floor(answer: Path, payloads, levels, opts, work, results, progress) -> None:
    progress.start("floor start")
    server = floor.FloorServer(answer, work / "floor.log").start()
    try:
        server.wait_ready()
        progress.done()
        levels_out = sweep_loadgen(server.url, payloads, levels, opts, server, progress, "floor")
        results["drivers"]["floor"] = {"label": DRIVER_LABELS["floor"], "levels": levels_out}
        results["floor"] = {"answer_bytes": answer.stat().st_size, "levels": list(levels)}
    except Exception as exc:  # the floor is context for the targets, never a reason to fail the run
        results["skipped"]["floor"] = f"{type(exc).__name__}: {exc}"
    finally:
        server.stop()


def _run_peer(workload, model_path, samples, payloads, levels, opts, work, results, progress) -> None:
    """MLServer on the same file (the scenario sweeps' peer; bench/peers.py compares all of them)."""
    from bench.peer.base import PeerModel
    from bench.peer.mlserver import MLServerPeer

    progress.start("peer start")
    try:
        MLServerPeer.ensure_venv()
    except Exception as exc:
        results["skipped"]["peer"] = f"no peer environment: {exc}"
        return
    threads = ceiling.server_threads(1, _flag_int(opts.server_flags, "--intra-op-threads"))
    peer = MLServerPeer(PeerModel.from_workload(workload, model_path, threads), work / "peer").start()
    try:
        peer.wait_ready()
        results["peer"] = peer.describe() | {"rss_after_ready_mib": round((peer.stats.rss() or 0) / 2**20, 1)}
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
        results.setdefault("peer", {})["rss"] = peer.stats.summary() if peer.stats else None


def _flag_int(flags: tuple[str, ...], name: str) -> int:
    for i, flag in enumerate(flags):
        if flag == name and i + 1 < len(flags):
            return int(flags[i + 1])
        if flag.startswith(name + "="):
            return int(flag.split("=", 1)[1])
    return 0
