"""The CUDA check of ../shared/GPU.md in one go: placement, parity, fp16, in-process and served timings.

``python -m bench.gpu_check --repository DIR --provider cuda --out OUT/gpu_check`` (what
bench/gpu_check.sh runs on the GPU machine; ``--provider cpu`` runs the same steps here, which
is how the test tier keeps this script working on a machine without a GPU). For every model of
the repository:

1. placement: one run with ONNX Runtime's profiler on; every graph node's execution provider
   counted from the profile, the nodes not on the asked provider named;
2. fp32 parity: a batch of random requests against the CPU provider, max |difference| (the
   bar is 1e-4: CUDA convolutions and MatMuls may use TF32);
3. fp16: the graph converted to fp16 inside (inputs and outputs kept fp32), the same batch,
   max |difference| (bar 1e-2) and, for classifier outputs, the same argmax;
4. in-process timings at batch 1, 8 and 32: median and p99 of ``session.run`` and of
   ``run_with_iobinding`` with inputs and outputs on the device (synchronised before the clock
   is read);
5. served: attnserve on the same provider, the load generator at c=1 and c=32, with the
   config's dynamic batching and with it removed, beside the in-process figures.

Inputs are random (never zeros), the clock is read after a warm-up, every figure is a median or
a percentile of many runs, and the results (JSON and Markdown, machine and device named) are
written once at the end. Quick mode (``--quick``) shortens every window for the test tier.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench import machine, repos
from bench.check import reference_session
from bench.loadgen import V2Surface, run_level
from bench.server import AttnServer
from bench.workload import Workload
from service.runtime.providers import execution_providers
from service.runtime.session import session_options

PROVIDER_NAME = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
FP32_BAR, FP16_BAR = 1e-4, 1e-2


def open_session(path: Path, provider: str, profile_dir: Path | None = None) -> ort.InferenceSession:
    options = session_options(0 if provider == "cuda" else 1)
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / path.parent.parent.name)
    providers = execution_providers(provider)
    return ort.InferenceSession(str(path), options, providers=[p for p, _ in providers],
                                provider_options=[o for _, o in providers])


def placement(path: Path, feeds: dict[str, np.ndarray], provider: str, work: Path) -> dict:
    session = open_session(path, provider, profile_dir=work)
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    counts: Counter = Counter()
    elsewhere = set()
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args and event["name"].endswith("_kernel_time"):
            counts[args["provider"]] += 1
            if args["provider"] != PROVIDER_NAME[provider]:
                elsewhere.add(f"{args.get('op_name', '?')}:{event['name'].removesuffix('_kernel_time')}")
    return {"kernels_by_provider": dict(counts), "not_on_provider": sorted(elsewhere),
            "all_on_provider": bool(counts) and not elsewhere}


def max_difference(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(g.astype(np.float64) - w))) if w.size else 0.0 for g, w in zip(got, want))


def fp16_variant(path: Path, work: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    out = work / f"{path.parent.parent.name}.fp16.onnx"
    onnx.save(model, str(out))
    return out


def timings(session: ort.InferenceSession, feeds: dict[str, np.ndarray], provider: str, runs: int) -> dict:
    names = [o.name for o in session.get_outputs()]
    for _ in range(3):
        session.run(names, feeds)
    plain = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(names, feeds)
        plain.append(time.perf_counter() - t0)
    out = {"run_p50_ms": float(np.median(plain) * 1e3), "run_p99_ms": float(np.percentile(plain, 99) * 1e3)}
    device = "cuda" if provider == "cuda" else "cpu"
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
    for name in names:
        binding.bind_output(name, device, 0)
    bound = []
    for i in range(runs + 3):
        binding.synchronize_inputs()
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if i >= 3:
            bound.append(time.perf_counter() - t0)
    out |= {"iobinding_p50_ms": float(np.median(bound) * 1e3), "iobinding_p99_ms": float(np.percentile(bound, 99) * 1e3)}
    return out


def check_model(workload: Workload, provider: str, work: Path, runs: int) -> dict:
    path = (workload.model_dir / "1" / "model.onnx").resolve()
    rng = np.random.default_rng(0)
    samples = workload.pool(32, rng)
    batch = workload.batch(samples[:8])
    result: dict = {"model": workload.name, "placement": placement(path, batch, provider, work)}
    reference = reference_session(path)
    names = [o.name for o in reference.get_outputs()]
    want = reference.run(names, batch)
    session = open_session(path, provider)
    result["fp32_max_abs_diff"] = max_difference(session.run(names, batch), want)
    result["fp32_ok"] = result["fp32_max_abs_diff"] <= FP32_BAR
    try:
        half = open_session(fp16_variant(path, work), provider)
        got = half.run(names, batch)
        result["fp16_max_abs_diff"] = max_difference(got, want)
        argmax = [n for n in names if n in ("logits", "probabilities")]
        result["fp16_same_argmax"] = all(np.array_equal(np.argmax(g, -1), np.argmax(w, -1))
                                         for n, g, w in zip(names, got, want) if n in argmax)
        result["fp16_ok"] = result["fp16_max_abs_diff"] <= FP16_BAR and result["fp16_same_argmax"]
    except Exception as exc:  # a converter or kernel gap is a finding, not a crash
        result["fp16_error"] = f"{type(exc).__name__}: {exc}"
        result["fp16_ok"] = False
    result["in_process"] = {}
    for size in [b for b in (1, 8, 32) if b <= max(1, workload.spec.max_batch_size)]:
        feeds = workload.batch([samples[i % len(samples)] for i in range(size)])
        result["in_process"][size] = timings(session, feeds, provider, runs)
    return result


def served(repository: Path, models: list[str], provider: str, work: Path, label: str,
           warmup_s: float, duration_s: float) -> dict:
    server = AttnServer(repository, work / f"server-{label}.log", provider=provider).start()
    out: dict = {}
    try:
        server.wait_ready()
        for name in models:
            workload = Workload(repository / name)
            payloads = V2Surface().payloads_from(workload, workload.pool(64, np.random.default_rng(1)))
            out[name] = {}
            for level in (1, 32):
                r = asyncio.run(run_level(server.url, payloads, level, warmup_s=warmup_s, duration_s=duration_s))
                out[name][level] = {"req_s": r.throughput_rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}
                print(f"[gpu_check] served {label} {name} c={level}: {r.throughput_rps:.0f} req/s p50 "
                      f"{r.p50_ms or 0:.2f} ms", file=sys.stderr, flush=True)
    finally:
        server.stop()
    return out


def markdown(results: dict) -> str:
    lines = [f"# CUDA check ({results['provider']})", "", f"Machine: {machine.one_line(results['machine'])}; "
             f"onnxruntime {results['onnxruntime']}, providers {results['available_providers']}; "
             f"wall {results['wall_s']} s.", "",
             "| model | all nodes on provider | fp32 max diff | fp16 max diff, argmax | run p50 ms b1 / b8 / b32 | IOBinding p50 ms b1 / b8 / b32 |",
             "|---|---|---|---|---|---|"]
    for m in results["models"]:
        ip = m["in_process"]
        runs = " / ".join(f"{ip[b]['run_p50_ms']:.2f}" for b in ip)
        bound = " / ".join(f"{ip[b]['iobinding_p50_ms']:.2f}" for b in ip)
        fp16 = m.get("fp16_error") or f"{m['fp16_max_abs_diff']:.2e}, {'same' if m['fp16_same_argmax'] else 'DIFFERENT'}"
        where = "yes" if m["placement"]["all_on_provider"] else f"no: {', '.join(m['placement']['not_on_provider'][:6])}"
        lines.append(f"| {m['model']} | {where} | {m['fp32_max_abs_diff']:.2e} | {fp16} | {runs} | {bound} |")
    lines += ["", "| model | batching | c=1 req/s | c=1 p50 ms | c=32 req/s | c=32 p99 ms |", "|---|---|---|---|---|---|"]
    for label, rows in results["served"].items():
        for name, levels in rows.items():
            one, many = levels.get(1) or levels.get("1"), levels.get(32) or levels.get("32")
            lines.append(f"| {name} | {label} | {one['req_s']:.0f} | {one['p50_ms'] or 0:.2f} | {many['req_s']:.0f} | "
                         f"{many['p99_ms'] or 0:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True, help="an exported model repository")
    parser.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--models", help="comma-separated (default: every model of the repository)")
    parser.add_argument("--quick", action="store_true", help="short windows (the test tier)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    started = time.time()
    if args.provider == "cuda" and PROVIDER_NAME["cuda"] not in ort.get_available_providers():
        print(f"[gpu_check] onnxruntime {ort.__version__} has no CUDAExecutionProvider "
              f"({ort.get_available_providers()}); install onnxruntime-gpu (see ../shared/GPU.md)", file=sys.stderr)
        return 2
    repository = args.repository.resolve()
    models = args.models.split(",") if args.models else sorted(p.name for p in repository.iterdir() if repos.has_model(repository, p.name))
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    runs, warmup_s, duration_s = (20, 0.3, 1.0) if args.quick else (200, 2.0, 6.0)
    results: dict = {"provider": args.provider, "machine": machine.describe(args.provider), "onnxruntime": ort.__version__,
                     "available_providers": ort.get_available_providers(), "models": [], "served": {}}
    for name in models:
        print(f"[gpu_check] {name}: placement, parity, fp16, in-process timings", file=sys.stderr, flush=True)
        results["models"].append(check_model(Workload(repository / name), args.provider, work, runs))
    results["served"]["dynamic batching"] = served(repository, models, args.provider, work, "batching", warmup_s, duration_s)
    nobatch = repos.build_scenario_repository(work, "nobatch", repository, models,
                                              {m: repos.no_dynamic_batching for m in models})
    results["served"]["off"] = served(nobatch, models, args.provider, work, "nobatch", warmup_s, duration_s)
    results["wall_s"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    failed = [m["model"] for m in results["models"] if not (m["placement"]["all_on_provider"] and m["fp32_ok"])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
