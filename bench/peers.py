"""attnserve against Triton, KServe and MLServer on the same ONNX files, in one run (issue 19).

``python -m bench.peers --out bench/results/peers`` serves each case from attnserve and then
from every peer (bench/peer/: tritonserver with a Python-backend model and its dynamic
batcher, KServe's ModelServer, MLServer with adaptive batching), checks a few answers of each
against in-process ONNX Runtime, and drives each with the same load generator
(bench/loadgen.py: grpc.aio closed loop, pre-serialised v2 ModelInfer requests) at the same
levels. Server CPU per request is read from /proc over each level (the server's process tree:
Triton's backend stubs and MLServer's worker included; the load generator never counts).

Cases (``--cases``):

- ``se_cnn_small``: the default SE-CNN (1x28x28), single-image requests;
- ``encoder``: the default Transformer encoder, token sequences of random lengths (ragged:
  attnserve and Triton pad per batch, MLServer and KServe run each request alone);
- ``se_cnn_128``: the SE-CNN benchmark config (3x128x128): compute-bound;
- ``identity``: a trivial graph (y = x, [batch, 16]): what serving costs with no compute,
  the figure that decides how a GPU server scales once compute leaves the CPU. Beside it, the
  no-work floors (bench/floor.py): grpc.aio as attnserve runs it, and grpcio's thread-pool
  server, each answering attnserve's own answer bytes: what any Python gRPC server pays.

Before the servers, each case's ceiling: in-process ONNX Runtime at every batch size with the
server's session settings (bench/ceiling.py). One summary table gives attnserve against each
peer as ratios (throughput, c=1 p50, CPU per request) and attnserve's share of the ceiling.

Order and drift: each case runs its systems back to back (attnserve first), a few minutes in
all; the load average at the start and end of each case is in the results. The load generator
shares the 2 cores with the server, as every system here does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import ceiling, cost, floor, machine, repos
from bench.check import verify_v2
from bench.loadgen import V2Surface, run_level
from bench.server import AttnServer, ManagedProcess
from bench.workload import Workload

ALL_PEERS = ("triton", "kserve", "mlserver")


@dataclass(frozen=True)
class Case:
    name: str
    base: str  # "default" | "benchmark" | "trivial"
    model: str
    levels: tuple[int, ...]
    description: str


CASES = {c.name: c for c in (
    Case("se_cnn_small", "default", "se_cnn_classifier", (1, 32, 64), "SE-CNN default (1x28x28), one image a request"),
    Case("encoder", "default", "transformer_encoder", (1, 32, 64), "Transformer encoder default, ragged token sequences"),
    Case("se_cnn_128", "benchmark", "se_cnn_classifier", (1, 32, 64), "SE-CNN benchmark config (3x128x128)"),
    Case("identity", "trivial", "identity", (1, 16, 64), "trivial graph y = x [batch, 16]: serving overhead only"),
)}


def repository_for(case: Case, cache: Path, default_repository: Path | None) -> Path:
    if case.base == "trivial":
        return cost.trivial_repository(cache / "repo-trivial")
    given = default_repository if case.base == "default" else None
    return repos.ensure_base(cache, case.base, [case.model], 64, given=given)


def drive(system: str, proc: ManagedProcess, url: str, payloads, levels, warmup_s: float, duration_s: float) -> list[dict]:
    rows = []
    for level in levels:
        cpu0 = proc.stats.cpu() if proc.stats else None
        result = asyncio.run(run_level(url, payloads, level, warmup_s=warmup_s, duration_s=duration_s))
        cpu1 = proc.stats.cpu() if proc.stats else None
        row = result.to_dict()
        # CPU over warm-up + window, divided by every request answered in that span.
        answered = result.requests * (warmup_s + duration_s) / duration_s
        row["server_cpu_us_per_request"] = ((cpu1 - cpu0) / answered * 1e6
                                            if cpu0 is not None and cpu1 is not None and answered else None)
        rows.append(row)
        print(f"[peers] {system:10s} c={level:3d} {result.throughput_rps:7.0f} req/s p50 {result.p50_ms or 0:7.2f} ms "
              f"p99 {result.p99_ms or 0:7.2f} ms cpu {row['server_cpu_us_per_request'] or 0:6.0f} us/req "
              f"errors {dict(result.errors)}", file=sys.stderr, flush=True)
    return rows


def run_case(case: Case, peers: tuple[str, ...], cache: Path, work: Path, default_repository: Path | None,
             warmup_s: float, duration_s: float, ceiling_s: float, floors: bool = False) -> dict:
    from bench.peer import peer_class
    from bench.peer.base import PeerModel

    repository = repository_for(case, cache, default_repository)
    workload = Workload(repository / case.model)
    model_path = (repository / case.model / "1" / "model.onnx").resolve()
    samples = workload.pool(256, np.random.default_rng(0))
    payloads = V2Surface().payloads_from(workload, samples)
    out: dict = {"case": case.name, "description": case.description, "model": workload.describe(),
                 "overhead_only": case.base == "trivial",
                 "levels": list(case.levels), "load_average": [machine.load_average()], "systems": {}, "skipped": {}}

    points, settings = ceiling.measure(workload, model_path, samples, sizes=ceiling.batch_sizes(workload.spec.max_batch_size),
                                       duration_s=ceiling_s)
    best = ceiling.best(points)
    out["ceiling"] = {"best": best.to_dict() if best else None, "settings": settings}

    server = AttnServer(repository, work / f"{case.name}-attnserve.log", flags=["--load-model", case.model]).start()
    answer = work / f"{case.name}.answer"
    try:
        server.wait_ready()
        out["checks"] = {"attnserve": verify_v2(server.url, case.model, model_path, samples[:8])}
        out["systems"]["attnserve"] = {"describe": {"server": "attnserve (this tree)", "argv": server.argv},
                                       "levels": drive("attnserve", server, server.url, payloads, case.levels, warmup_s, duration_s)}
        answer.write_bytes(floor.capture_answer(server.url, payloads[0]))
    finally:
        server.stop()
    if floors:
        run_floors(case, answer, payloads, work, warmup_s, duration_s, out)

    threads = ceiling.server_threads(workload.spec.instance_count)
    for name in peers:
        cls = peer_class(name)
        why = cls.available()
        if why is not None:
            out["skipped"][name] = why
            continue
        peer = cls(PeerModel.from_workload(workload, model_path, threads), work / f"{case.name}-{name}")
        peer.start()
        try:
            peer.wait_ready()
            out["checks"][name] = verify_v2(peer.url, case.model, model_path, samples[:8])
            out["systems"][name] = {"describe": peer.describe(),
                                    "levels": drive(name, peer, peer.url, payloads, case.levels, warmup_s, duration_s)}
        except Exception as exc:  # one peer failing leaves the others, and says why
            out["skipped"][name] = f"{type(exc).__name__}: {exc}"
        finally:
            peer.stop()
    out["load_average"].append(machine.load_average())
    return out


def run_floors(case: Case, answer: Path, payloads, work: Path, warmup_s: float, duration_s: float, out: dict) -> None:
    """What Python gRPC costs with no work at all: bench/floor.py answering attnserve's own answer
    bytes, grpc.aio as attnserve runs it and grpcio's thread-pool server."""
    for mode in ("aio", "sync"):
        name = f"floor {mode}"
        server = floor.FloorServer(answer, work / f"{case.name}-floor-{mode}.log", mode=mode).start()
        try:
            server.wait_ready()
            out["systems"][name] = {"describe": {"server": f"bench/floor.py --mode {mode}: answers fixed bytes, no work"},
                                    "levels": drive(name, server, server.url, payloads, case.levels, warmup_s, duration_s)}
        except Exception as exc:
            out["skipped"][name] = f"{type(exc).__name__}: {exc}"
        finally:
            server.stop()


# -- the summary --------------------------------------------------------------------------------
def at(case: dict, system: str, concurrency: int, key: str):
    for row in (case["systems"].get(system) or {}).get("levels", []):
        if row["concurrency"] == concurrency:
            return row.get(key)
    return None


def _ratio(a, b) -> float | None:
    return a / b if a and b else None


def summary_rows(case: dict) -> list[dict]:
    """attnserve against each peer: throughput ratios (>1: attnserve ahead), p50 and CPU ratios
    as peer over attnserve (>1: attnserve faster / cheaper)."""
    low, mid, top = min(case["levels"]), sorted(case["levels"])[len(case["levels"]) // 2], max(case["levels"])
    rows = []
    for peer in [s for s in case["systems"] if s != "attnserve" and not s.startswith("floor")]:
        rows.append({
            "case": case["case"], "peer": peer,
            f"req/s c={mid}": _ratio(at(case, "attnserve", mid, "throughput_rps"), at(case, peer, mid, "throughput_rps")),
            f"req/s c={top}": _ratio(at(case, "attnserve", top, "throughput_rps"), at(case, peer, top, "throughput_rps")),
            f"p50 c={low}": _ratio(at(case, peer, low, "p50_ms"), at(case, "attnserve", low, "p50_ms")),
            f"p99 c={mid}": _ratio(at(case, peer, mid, "p99_ms"), at(case, "attnserve", mid, "p99_ms")),
            f"CPU/request c={mid}": _ratio(at(case, peer, mid, "server_cpu_us_per_request"),
                                           at(case, "attnserve", mid, "server_cpu_us_per_request")),
        })
    return rows


def _num(value, digits: int = 0, suffix: str = "") -> str:
    return "—" if value is None else f"{value:,.{digits}f}{suffix}"


def markdown(results: dict) -> str:
    lines = ["# attnserve against Triton, KServe and MLServer", "",
             f"Machine: {machine.one_line(results['machine'])}. {results['warmup_s']:g} s warm-up + "
             f"{results['duration_s']:g} s per level, closed loop (bench/loadgen.py, grpc.aio, the same pre-built "
             "v2 ModelInfer requests for every system); server CPU from /proc over each level, server process tree "
             "only. The load generator shares the cores.", ""]
    lines += ["## Summary: attnserve over each peer", "",
              "Throughput: attnserve ÷ peer. p50, p99 and CPU/request: peer ÷ attnserve. Above 1: attnserve ahead.", "",
              "| case | peer | req/s c=mid | req/s c=top | p50 c=1 | p99 c=mid | CPU/request c=mid | attnserve c=top ÷ ceiling |",
              "|---|---|---|---|---|---|---|---|"]
    for case in results["cases"]:
        best = (case["ceiling"]["best"] or {}).get("throughput_rows_s")
        top = max(case["levels"])
        # A trivial graph's ceiling is millions of rows/s: a share of it says nothing.
        share = None if case.get("overhead_only") else _ratio(at(case, "attnserve", top, "throughput_rps"), best)
        for row in summary_rows(case):
            values = [v for k, v in row.items() if k not in ("case", "peer")]
            lines.append(f"| {case['case']} | {row['peer']} | " + " | ".join(_num(v, 2) for v in values)
                         + f" | {_num(share, 2)} |")
    for case in results["cases"]:
        best = case["ceiling"]["best"] or {}
        lines += ["", f"## {case['case']}: {case['description']}", "",
                  f"Ceiling (in-process ONNX Runtime, best batch {best.get('batch_size', '—')}): "
                  f"{_num(best.get('throughput_rows_s'))} rows/s. Load average start/end: "
                  f"{case['load_average'][0]} / {case['load_average'][-1]}.", "",
                  "| system | c | req/s | p50 ms | p99 ms | server CPU µs/request | errors |", "|---|---|---|---|---|---|---|"]
        for system, data in case["systems"].items():
            for r in data["levels"]:
                lines.append(f"| {system} | {r['concurrency']} | {r['throughput_rps']:,.0f} | {_num(r['p50_ms'], 2)} | "
                             f"{_num(r['p99_ms'], 2)} | {_num(r.get('server_cpu_us_per_request'))} | {r['errors'] or ''} |")
        for system, why in case["skipped"].items():
            lines.append(f"| {system} | skipped: {why} | | | | | |")
        lines += ["", "How each was configured:", ""]
        for system, data in case["systems"].items():
            text = "; ".join(f"{k}: {v}" for k, v in data["describe"].items() if k != "argv")
            lines.append(f"- {system}: {text}")
    lines += ["", "Reproduce: `python -m bench peer-setup` once, then `python -m bench.peers --out bench/results/peers`."]
    return "\n".join(lines) + "\n"


def bar_chart(results: dict, path: Path) -> Path | None:
    """Throughput at the top level, one group of bars per case: the picture of the table."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    colours = {"attnserve": "tab:blue", "triton": "tab:green", "kserve": "tab:purple", "mlserver": "tab:red",
               "floor aio": "lightgrey", "floor sync": "darkgrey"}
    cases = results["cases"]
    fig, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases), 3.4), squeeze=False)
    for ax, case in zip(axes[0], cases):
        top = max(case["levels"])
        systems = [s for s in colours if s in case["systems"]]
        values = [at(case, s, top, "throughput_rps") or 0 for s in systems]
        ax.bar(systems, values, color=[colours[s] for s in systems])
        best = None if case.get("overhead_only") else (case["ceiling"]["best"] or {}).get("throughput_rows_s")
        if best:
            ax.axhline(best, color="grey", linestyle="--", linewidth=1, label="in-process ceiling")
            ax.legend(fontsize=7)
        ax.set_title(f"{case['case']} (c={top})", fontsize=9)
        ax.set_ylabel("req/s")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--peers", default=",".join(ALL_PEERS), help="comma-separated peers; '' for attnserve alone")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--ceiling-seconds", type=float, default=1.5, help="per batch size")
    parser.add_argument("--no-floor", action="store_true", help="skip the no-work gRPC floors of the identity case")
    parser.add_argument("--default-repository", type=Path, help="an exported default repository to use as it is")
    parser.add_argument("--cache", type=Path, default=Path("bench/.cache"))
    parser.add_argument("--out", type=Path, help="write OUT.json, OUT.md and OUT.png")
    args = parser.parse_args(argv)
    peers = tuple(p for p in args.peers.split(",") if p)
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = {"machine": machine.describe("cpu"), "warmup_s": args.warmup, "duration_s": args.duration,
               "peers": list(peers), "cases": []}
    for name in args.cases.split(","):
        print(f"[peers] case {name}", file=sys.stderr, flush=True)
        results["cases"].append(run_case(CASES[name], peers, args.cache.resolve(), work,
                                         args.default_repository.resolve() if args.default_repository else None,
                                         args.warmup, args.duration, args.ceiling_seconds,
                                         floors=CASES[name].base == "trivial" and not args.no_floor))
    results["wall_s"] = round(time.time() - started, 1)
    text = markdown(results)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
        bar_chart(results, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
