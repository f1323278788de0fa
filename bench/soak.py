"""The soak: every default model under mixed v2 load for a long while, the server's RSS
sampled all along, and its growth from the start of the window to the end.
"""

from __future__ import annotations

import asyncio

import numpy as np

from bench import machine, repos
from bench.check import verify_v2
from bench.drivers import Options, Progress, finish, fresh_workdir, now, recording_failure, rss_samples_mib, short
from bench.loadgen import Payload, V2Surface, run_level
from bench.scenarios import DEFAULT_MODELS, DRIVER_LABELS, RSS_500, SOAK_FLAT
from bench.server import AttnServer
from bench.workload import Workload


def run_soak(seconds: float, opts: Options) -> dict:
    """Every default model under mixed load for ``seconds``; VmRSS sampled twice a second."""
    work = fresh_workdir(opts, "soak")
    warmup = min(60.0, max(1.0, seconds * 0.1))
    results: dict = {
        "scenario": {"name": "soak", "description": f"every default model, mixed v2 load at c={opts.soak_concurrency}",
                     "base": "default", "model": "all", "serve_models": list(DEFAULT_MODELS), "config": "as exported",
                     "concurrency": [opts.soak_concurrency], "drivers": ["loadgen"]},
        "started_at": now(), "note": opts.note, "machine": machine.describe(opts.provider),
        "settings": {"soak_s": seconds, "warmup_s": warmup, "concurrency": [opts.soak_concurrency], "rss_interval_s": 0.5},
        "drivers": {}, "skipped": {}, "checks": {},
    }
    progress = Progress("soak", 3)
    with recording_failure(results, progress):
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
            progress.done(short(level))
        finally:
            server.stop()
        samples = server.stats.samples
        results["server"] = {"rss": server.stats.summary(), "rss_samples": rss_samples_mib(samples)}
        results["soak"] = soak_growth(samples, start_s=load_from + warmup)
    return finish(results, (RSS_500, SOAK_FLAT))


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
