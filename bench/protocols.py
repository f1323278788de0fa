"""HTTP/REST beside gRPC, and beside MLServer's HTTP, in one run (issue 16's bench).

``python -m bench.protocols --repository DIR --model se_cnn_classifier --out bench/results/protocols``
serves one model from attnserve (gRPC and HTTP ports of the same process) and from MLServer
(its REST endpoint), then drives each surface with a closed loop at every concurrency level:

- ``attnserve grpc``: ModelInfer with raw tensors (grpc.aio, pre-serialised, as bench.loadgen);
- ``attnserve http binary``: ``POST /v2/models/m/infer`` with Triton's binary tensor extension
  both ways (what ``tritonclient.http`` sends with binary data);
- ``attnserve http json``: the same request as JSON ``data`` lists, JSON answers;
- ``mlserver http json``: the same JSON body to MLServer (it has no binary extension).

Every request body is built once before the clock starts, and the HTTP loop is one aiohttp
session whose connection pool is as large as the concurrency, so each caller keeps its own
keep-alive connection (as a load balancer or a client pool would). Before any figure, one
answer of each surface is compared with the others (the same probabilities). The server's
CPU per request is read from /proc (the process tree: MLServer's worker included).

Targets (issue 16): attnserve HTTP at c=32 >= 80% of attnserve gRPC's throughput, and ahead of
MLServer's HTTP. The load generator shares the machine with the servers: on 2 cores, its own
CPU (JSON encoding and HTTP parsing in Python) caps what any HTTP surface can show, so the
ratios are what to read, with the load average in the results file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bench import machine
from bench.loadgen import LevelResult, V2Surface, run_level, summarise
from bench.server import AttnServer, ManagedProcess
from bench.workload import Workload
from service.dtypes import NUMPY_TO_V2

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class HttpRequest:
    body: bytes
    headers: dict[str, str]


def json_request(arrays: dict[str, np.ndarray]) -> HttpRequest:
    inputs = [{"name": name, "shape": list(a.shape), "datatype": NUMPY_TO_V2[a.dtype], "data": a.ravel().tolist()}
              for name, a in arrays.items()]
    return HttpRequest(json.dumps({"inputs": inputs}).encode(), {"Content-Type": "application/json"})


def binary_request(arrays: dict[str, np.ndarray], outputs: list[str]) -> HttpRequest:
    inputs = [{"name": name, "shape": list(a.shape), "datatype": NUMPY_TO_V2[a.dtype],
               "parameters": {"binary_data_size": a.nbytes}} for name, a in arrays.items()]
    header = json.dumps({"inputs": inputs, "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs]}).encode()
    body = header + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())
    return HttpRequest(body, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))})


def first_output(answer: bytes, headers: dict[str, str], name: str, dtype: np.dtype) -> np.ndarray:
    """The output ``name`` of an HTTP v2 answer, JSON or binary."""
    length = headers.get(HEADER_LENGTH)
    header = json.loads(answer[: int(length)] if length else answer)
    offset = int(length) if length else 0
    for out in header["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if out["name"] == name:
            if size is not None:
                return np.frombuffer(answer[offset: offset + size], dtype).reshape(out["shape"])
            return np.asarray(out["data"], dtype).reshape(out["shape"])
        offset += size or 0
    raise KeyError(name)


async def http_level(url: str, requests: list[HttpRequest], concurrency: int, *, warmup_s: float,
                     duration_s: float, on_tick: Callable[[float], None] | None = None) -> LevelResult:
    """Closed loop over HTTP/1.1 keep-alive: the same counting rules as bench.loadgen.run_level."""
    import aiohttp

    latencies: list[float] = []
    errors: Counter = Counter()
    rows = 0
    clock = time.perf_counter
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        begin = clock()
        window_from, window_to = begin + warmup_s, begin + warmup_s + duration_s

        async def caller(index: int) -> None:
            nonlocal rows
            k = index
            while (sent := clock()) < window_to:
                request = requests[k % len(requests)]
                k += concurrency
                try:
                    async with session.post(url, data=request.body, headers=request.headers) as answer:
                        await answer.read()
                        failed = None if answer.status == 200 else f"HTTP {answer.status}"
                except aiohttp.ClientError as exc:
                    failed = type(exc).__name__
                done = clock()
                if window_from <= done <= window_to:
                    if failed is None:
                        latencies.append(done - sent)
                        rows += 1
                    else:
                        errors[failed] += 1

        async def ticker() -> None:
            while (now := clock()) < window_to:
                if on_tick is not None:
                    on_tick(now - begin)
                await asyncio.sleep(min(0.5, window_to - now))

        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        await tick
    return summarise(concurrency, duration_s, latencies, rows, errors)


async def http_once(url: str, request: HttpRequest) -> tuple[bytes, dict[str, str]]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=request.body, headers=request.headers) as answer:
            body = await answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{url}: HTTP {answer.status}: {body[:300]!r}")
            return body, dict(answer.headers)


def mlserver(workload: Workload, folder: Path) -> tuple[ManagedProcess, str]:
    """MLServer (bench/peer/mlserver.py) on the same ONNX file; returns it and its REST base URL."""
    from bench.peer.base import PeerModel
    from bench.peer.mlserver import MLServerPeer
    from service.runtime.session import default_intra_op_threads

    MLServerPeer.ensure_venv()
    model = PeerModel.from_workload(workload, workload.model_dir / "1" / "model.onnx",
                                    default_intra_op_threads(workload.spec.instance_count))
    peer = MLServerPeer(model, folder)
    peer.start()
    peer.wait_ready()
    port = json.loads((folder / "settings.json").read_text())["http_port"]
    return peer, f"http://127.0.0.1:{port}"


def run(repository: Path, model: str, levels: list[int], warmup_s: float, duration_s: float, work: Path,
        with_mlserver: bool = True) -> dict:
    workload = Workload(repository / model)
    samples = workload.pool(256, np.random.default_rng(0))
    outputs = [o.name for o in workload.spec.outputs]
    first = outputs[0]
    grpc_payloads = V2Surface().payloads_from(workload, samples)
    json_bodies = [json_request(s) for s in samples]
    binary_bodies = [binary_request(s, outputs) for s in samples]
    results: dict = {"model": model, "levels": levels, "warmup_s": warmup_s, "duration_s": duration_s,
                     "machine": machine.describe("cpu"), "load_average": [machine.load_average()], "surfaces": {}}

    def record(surface: str, proc: ManagedProcess, measure: Callable[[int], LevelResult]) -> None:
        rows = []
        for level in levels:
            cpu0 = proc.stats.cpu() if proc.stats else None
            result = measure(level)
            cpu1 = proc.stats.cpu() if proc.stats else None
            if cpu0 is not None and cpu1 is not None:
                result.server_cpu_s = cpu1 - cpu0
            row = result.to_dict()
            row["server_cpu_us_per_request"] = (result.server_cpu_s / result.requests * 1e6
                                                if result.server_cpu_s is not None and result.requests else None)
            rows.append(row)
            print(f"[protocols] {surface:24s} c={level:3d} {result.throughput_rps:7.0f} req/s p50 "
                  f"{result.p50_ms or 0:6.2f} ms p99 {result.p99_ms or 0:6.2f} ms errors {dict(result.errors)}",
                  file=sys.stderr, flush=True)
        results["surfaces"][surface] = rows

    server = AttnServer(repository, work / "attnserve.log", flags=["--http-port", "0", "--load-model", model])
    server.start()
    try:
        server.wait_ready()
        http_base = server.http_url
        infer = f"{http_base}/v2/models/{model}/infer"
        # The same answer on every surface before any figure.
        reference = asyncio.run(_grpc_output(server.url, grpc_payloads[0].body, first))
        for request in (json_bodies[0], binary_bodies[0]):
            body, headers = asyncio.run(http_once(infer, request))
            np.testing.assert_allclose(first_output(body, headers, first, reference.dtype), reference, rtol=1e-5, atol=1e-6)
        record("attnserve grpc", server, lambda c: asyncio.run(
            run_level(server.url, grpc_payloads, c, warmup_s=warmup_s, duration_s=duration_s)))
        record("attnserve http binary", server, lambda c: asyncio.run(
            http_level(infer, binary_bodies, c, warmup_s=warmup_s, duration_s=duration_s)))
        record("attnserve http json", server, lambda c: asyncio.run(
            http_level(infer, json_bodies, c, warmup_s=warmup_s, duration_s=duration_s)))
    finally:
        server.stop()
    if with_mlserver:
        peer, base = mlserver(workload, work / "mlserver")
        try:
            url = f"{base}/v2/models/{model}/infer"
            body, headers = asyncio.run(http_once(url, json_bodies[0]))
            np.testing.assert_allclose(first_output(body, headers, first, reference.dtype), reference, rtol=1e-4, atol=1e-5)
            record("mlserver http json", peer, lambda c: asyncio.run(
                http_level(url, json_bodies, c, warmup_s=warmup_s, duration_s=duration_s)))
        finally:
            peer.stop()
    results["load_average"].append(machine.load_average())
    results["ratios"] = ratios(results["surfaces"], levels)
    return results


async def _grpc_output(url: str, body: bytes, name: str) -> np.ndarray:
    from bench.loadgen import Payload, call_once
    from service.dtypes import V2_TO_NUMPY
    from service.proto.inference import grpc_service_pb2 as pb

    answer = pb.ModelInferResponse.FromString(await call_once(url, Payload(
        "/inference.GRPCInferenceService/ModelInfer", body, 1)))
    for index, out in enumerate(answer.outputs):
        if out.name == name:
            return np.frombuffer(answer.raw_output_contents[index], V2_TO_NUMPY[out.datatype]).reshape(list(out.shape))
    raise KeyError(name)


def ratios(surfaces: dict[str, list[dict]], levels: list[int]) -> dict:
    def at(surface: str, c: int, key: str) -> float | None:
        for row in surfaces.get(surface, []):
            if row["concurrency"] == c:
                return row[key]
        return None

    top, low = max(levels), min(levels)
    out: dict = {}
    grpc_top = at("attnserve grpc", top, "throughput_rps")
    for surface in [s for s in surfaces if s != "attnserve grpc"]:
        value = at(surface, top, "throughput_rps")
        out[f"{surface} / attnserve grpc, req/s at c={top}"] = value / grpc_top if value and grpc_top else None
    for ours in ("attnserve http binary", "attnserve http json"):
        theirs = at("mlserver http json", top, "throughput_rps")
        value = at(ours, top, "throughput_rps")
        out[f"{ours} / mlserver http json, req/s at c={top}"] = value / theirs if value and theirs else None
    for surface in surfaces:
        out[f"{surface} p50 at c={low}, ms"] = at(surface, low, "p50_ms")
    return out


def markdown(results: dict) -> str:
    levels = results["levels"]
    lines = [f"# HTTP/REST beside gRPC: {results['model']}", "",
             f"Machine: {machine.one_line(results['machine'])}; load average start/end: "
             f"{results['load_average'][0]} / {results['load_average'][-1]}. "
             f"{results['warmup_s']:g} s warm-up + {results['duration_s']:g} s per level, closed loop; the load "
             "generator shares the cores.", "",
             "| surface | c | req/s | p50 ms | p99 ms | server CPU µs/request | errors |", "|---|---|---|---|---|---|---|"]
    for surface, rows in results["surfaces"].items():
        for r in rows:
            cpu = r.get("server_cpu_us_per_request")
            lines.append(f"| {surface} | {r['concurrency']} | {r['throughput_rps']:.0f} | {r['p50_ms'] or 0:.2f} | "
                         f"{r['p99_ms'] or 0:.2f} | {'' if cpu is None else f'{cpu:.0f}'} | {r['errors'] or ''} |")
    lines += ["", "| ratio | value | target |", "|---|---|---|"]
    for key, value in results["ratios"].items():
        target = ""
        if value is None:
            target = "not measured"
        elif key.startswith("attnserve http") and "/ attnserve grpc" in key:
            target = ">= 0.80: " + ("met" if value >= 0.8 else "**MISSED**")
        elif "/ mlserver" in key:
            target = "> 1: " + ("met" if value > 1 else "**MISSED**")
        shown = "" if value is None else (f"{value:.2f}" if "ms" not in key else f"{value:.2f} ms")
        lines.append(f"| {key} | {shown} | {target} |")
    lines += ["", f"Reproduce: `python -m bench.protocols --repository DIR --model {results['model']} "
              f"--concurrency {','.join(map(str, levels))} --duration {results['duration_s']:g} --out OUT`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.protocols", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True, help="exported model repository")
    parser.add_argument("--model", default="se_cnn_classifier")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--no-mlserver", action="store_true", help="attnserve's surfaces only")
    parser.add_argument("--work", type=Path, default=Path("bench/.cache/protocols"))
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    results = run(args.repository.resolve(), args.model, levels, args.warmup, args.duration, args.work.resolve(),
                  with_mlserver=not args.no_mlserver)
    text = markdown(results)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
