"""``python -m bench``: run scenarios and write their results.

    python -m bench list
    python -m bench run --scenario se_cnn_default --out bench/results/
    python -m bench run --all
    python -m bench run --soak 600
    python -m bench run --scenario se_cnn_default --quick --profile
    python -m bench peer-setup

Exit status: 0 when every scenario ran (targets met or not: they are reported, not enforced),
1 when a scenario failed to run, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import perf_analyzer
from bench.scenarios import SCENARIOS

# Defaults of the timing flags, and what --quick puts in place of those not given.
NORMAL = dict(duration=10.0, warmup=2.0, ceiling_seconds=3.0, reference_seconds=2.0, concurrency=None, pa_interval=5000, pa_stability=10, pa_trials=6)
QUICK = dict(duration=2.0, warmup=1.0, ceiling_seconds=1.0, reference_seconds=0.5, concurrency=(1, 8, 32), pa_interval=1000, pa_stability=100, pa_trials=3)


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="attnserve benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the scenarios")
    setup = sub.add_parser("peer-setup", help="create the peers' virtual environments (MLServer, Triton, KServe)")
    setup.add_argument("--peer", action="append", choices=["mlserver", "triton", "kserve"],
                       help="only this peer (repeatable; default: all three)")
    run = sub.add_parser("run", help="run scenarios and write results")
    pick = run.add_argument_group("what to run")
    pick.add_argument("--scenario", action="append", default=[], choices=sorted(SCENARIOS), metavar="NAME",
                      help="scenario to run (repeatable; see `python -m bench list`)")
    pick.add_argument("--all", action="store_true", help="every scenario")
    pick.add_argument("--soak", type=float, metavar="SECONDS",
                      help="also run the memory soak: every default model under load, VmRSS sampled")
    pick.add_argument("--drivers", help="only these drivers (comma-separated: loadgen,api,perf_analyzer,floor,peer)")
    pick.add_argument("--no-peer", action="store_true", help="skip MLServer")
    how = run.add_argument_group("how long")
    how.add_argument("--duration", type=float, help="seconds recorded per level (loadgen; default 10)")
    how.add_argument("--warmup", type=float, help="seconds per level before recording (default 2)")
    how.add_argument("--concurrency", type=_levels, help="override every sweep, e.g. 1,8,32")
    how.add_argument("--ceiling-seconds", type=float, help="seconds per batch size in-process (default 3)")
    how.add_argument("--reference-seconds", type=float,
                     help="in-process batch 1 measured before and after each c=1 level (default 2)")
    how.add_argument("--pa-interval", type=int, help="perf_analyzer --measurement-interval in ms (default 5000)")
    how.add_argument("--pa-stability", type=int, help="perf_analyzer --stability-percentage (default 10)")
    how.add_argument("--pa-trials", type=int, help="perf_analyzer --max-trials (default 6)")
    how.add_argument("--pa-mode", choices=("async", "sync"), default="async")
    how.add_argument("--quick", action="store_true",
                     help="a smoke run: 2 s levels at 1,8,32, 1 s ceilings, loose perf_analyzer stability")
    run.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    run.add_argument("--cache", type=Path, default=Path("bench/.cache"), help="exported repositories and logs")
    run.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument("--benchmark-max-batch-size", type=int, default=16,
                     help="max_batch_size of the benchmark exports (export time grows with it)")
    run.add_argument("--rebuild", action="store_true", help="re-export the base repositories")
    run.add_argument("--default-repository", type=Path, metavar="DIR",
                     help="serve the default models from this repository instead of exporting them")
    run.add_argument("--profile", action="store_true", help="py-spy flame graph of the server (<out>/<scenario>.svg)")
    run.add_argument("--note", default="", help="written into every results file (e.g. 'contended: 5 other jobs')")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--pool", type=int, default=256, help="distinct random requests per model")
    run.add_argument("--soak-concurrency", type=int, default=8)
    run.add_argument("--server-flag", action="append", default=[], metavar="FLAG",
                     help="extra `attnserve serve` flag, e.g. --server-flag=--intra-op-threads=1")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:28s} {scenario.description}  [{', '.join(scenario.drivers)}]")
        return 0
    if args.command == "peer-setup":
        from bench.peer import PEERS, peer_class

        for name in args.peer or list(PEERS):
            print(f"{name}: {peer_class(name).ensure_venv()}")
        return 0

    names = list(SCENARIOS) if args.all else list(dict.fromkeys(args.scenario))
    if not names and args.soak is None:
        parser.error("run needs --scenario NAME, --all or --soak SECONDS")
    for key, value in (QUICK if args.quick else NORMAL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    from service.runtime.providers import resolve_provider

    from bench import report, runner, soak
    from bench.drivers import Options

    opts = Options(
        out=args.out.resolve(), cache=args.cache.resolve(), provider=resolve_provider(args.provider),
        duration_s=args.duration, warmup_s=args.warmup, concurrency=args.concurrency,
        drivers=tuple(args.drivers.split(",")) if args.drivers else None, pool=args.pool,
        ceiling_s=args.ceiling_seconds, reference_s=args.reference_seconds, benchmark_max_batch=args.benchmark_max_batch_size,
        perf=perf_analyzer.Settings(args.pa_interval, args.pa_stability, args.pa_trials, args.pa_mode),
        peer=not args.no_peer, profile=args.profile, rebuild=args.rebuild, note=args.note, seed=args.seed,
        server_flags=tuple(args.server_flag), soak_concurrency=args.soak_concurrency,
        default_repository=args.default_repository.resolve() if args.default_repository else None,
    )
    everything = []
    for name in names:
        results = runner.run_scenario(SCENARIOS[name], opts)
        files = report.write(results, opts.out)
        everything.append(results)
        _print_outcome(results, files)
    if args.soak is not None:
        results = soak.run_soak(args.soak, opts)
        files = report.write(results, opts.out)
        everything.append(results)
        _print_outcome(results, files)
    if len(everything) > 1:
        print(f"summary: {report.summary(everything, opts.out)}")
    return 1 if any(r.get("error") for r in everything) else 0


def _print_outcome(results: dict, files: dict) -> None:
    name = results["scenario"]["name"]
    if results.get("error"):
        print(f"{name}: FAILED: {results['error']}", file=sys.stderr)
    for row in results.get("targets", []):
        print(f"{name}: [{row['status']}] {row['description']} ({row['source']}): {row['measured']} (required {row['required']})")
    print(f"{name}: wrote {', '.join(files.values())}")
