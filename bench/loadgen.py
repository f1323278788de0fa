"""Closed-loop gRPC load generator (grpc.aio): ``concurrency`` callers, each sending its next
request as soon as the previous one is answered, every latency recorded.

Requests are built once, before the clock starts, and sent pre-serialised through a raw
``unary_unary`` call (bytes in, bytes out), so the client spends its CPU on gRPC, not on
protobuf, and a shared machine loses as little as possible to it. A *surface* turns a
model's random samples into (method, payload bytes, rows); adding an RPC surface is one
small class:

- :class:`V2Surface`: ``inference.GRPCInferenceService/ModelInfer`` with raw tensors (our
  server, Triton, MLServer all take it);
- :class:`ApiSurface`: ``attnserve.v1.AttnServe`` Classify (PNG images), Encode (ragged token
  sequences) or Generate (seed + class), chosen from the model's inputs.

Run on its own: ``python -m bench.loadgen --url 127.0.0.1:8001 --repository DIR --model NAME
--concurrency 1,8,32 --duration 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import grpc
import numpy as np

from bench.workload import Workload
from service.dtypes import NUMPY_TO_V2

MAX_MESSAGE_BYTES = 64 * 2**20
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


# -- surfaces ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Payload:
    method: str  # full gRPC method path
    body: bytes  # serialised request message
    rows: int  # rows of model input it carries


class Surface(Protocol):
    name: str

    def payloads(self, workload: Workload, count: int, rng: np.random.Generator) -> list[Payload]: ...


def _method(descriptor, service: str, rpc: str) -> str:
    return f"/{descriptor.services_by_name[service].full_name}/{rpc}"


def v2_request(model: str, arrays: dict[str, np.ndarray]):
    """A ModelInferRequest with raw tensors; every output is returned (no ``outputs`` list)."""
    from service.proto.inference import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=NUMPY_TO_V2[array.dtype], shape=list(array.shape))
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request


class V2Surface:
    name = "v2"

    def payloads(self, workload: Workload, count: int, rng: np.random.Generator) -> list[Payload]:
        return self.payloads_from(workload, workload.pool(count, rng))

    def payloads_from(self, workload: Workload, samples: list[dict[str, np.ndarray]]) -> list[Payload]:
        """The same requests the ceiling and perf_analyzer use, as ModelInfer payloads."""
        from service.proto.inference import grpc_service_pb2 as pb

        method = _method(pb.DESCRIPTOR, "GRPCInferenceService", "ModelInfer")
        return [Payload(method, v2_request(workload.name, s).SerializeToString(), 1) for s in samples]


class ApiSurface:
    """The attnserve application API: what an application would send, one item per request."""

    name = "api"

    def payloads(self, workload: Workload, count: int, rng: np.random.Generator) -> list[Payload]:
        from service.proto.attnserve.v1 import attnserve_pb2 as pb

        out = []
        for _ in range(count):
            if workload.kind == "image":
                rpc = "Classify"
                message = pb.ClassifyRequest(model=workload.name, images=[workload.image_png(rng)], top_k=5)
            elif workload.kind == "tokens":
                rpc = "Encode"
                ids = workload.token_ids(workload.lengths.draw(rng, workload.max_length), rng)
                message = pb.EncodeRequest(
                    model=workload.name, sequences=[pb.Sequence(ids=pb.TokenIds(ids=ids.tolist()))], top_k=5
                )
            else:
                rpc = "Generate"
                message = pb.GenerateRequest(
                    model=workload.name, count=1, seed=int(rng.integers(0, 2**31)),
                    class_ids=[int(rng.integers(0, workload.num_classes))],
                )
            out.append(Payload(_method(pb.DESCRIPTOR, "AttnServe", rpc), message.SerializeToString(), 1))
        return out


SURFACES: dict[str, Callable[[], Surface]] = {"v2": V2Surface, "api": ApiSurface}


# -- one concurrency level --------------------------------------------------------------------
@dataclass
class LevelResult:
    """One concurrency level: counts, rates and latency percentiles (milliseconds)."""

    concurrency: int
    duration_s: float
    requests: int
    rows: int
    errors: dict[str, int]
    throughput_rps: float  # successful requests per second
    throughput_rows_s: float
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    client_cpu_s: float | None = None  # this process's CPU time during the window
    server_cpu_s: float | None = None  # filled by the runner from /proc/<pid>/stat
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(
    concurrency: int, duration_s: float, latencies_s: Sequence[float], rows: int, errors: Counter,
    client_cpu_s: float | None = None,
) -> LevelResult:
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    pct = (lambda q: float(np.percentile(ms, q))) if ms.size else (lambda q: None)
    return LevelResult(
        concurrency=concurrency,
        duration_s=round(duration_s, 3),
        requests=int(ms.size),
        rows=rows,
        errors=dict(errors),
        throughput_rps=ms.size / duration_s if duration_s > 0 else 0.0,
        throughput_rows_s=rows / duration_s if duration_s > 0 else 0.0,
        p50_ms=pct(50), p90_ms=pct(90), p95_ms=pct(95), p99_ms=pct(99),
        mean_ms=float(ms.mean()) if ms.size else None,
        max_ms=float(ms.max()) if ms.size else None,
        client_cpu_s=client_cpu_s,
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_level(
    url: str,
    payloads: Sequence[Payload],
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float,
    timeout_s: float = 60.0,
    on_tick: Callable[[float], None] | None = None,
) -> LevelResult:
    """Closed loop at ``concurrency`` for ``warmup_s`` (not recorded) then ``duration_s``.

    Counted: requests *answered* inside the window (throughput) and their latencies; a request
    that fails is counted by status code and not in the latencies. ``on_tick(seconds)`` is
    called about twice a second with the time elapsed (for progress bars).
    """
    if not payloads:
        raise ValueError("no payloads to send")
    latencies: list[float] = []
    rows = 0
    errors: Counter = Counter()
    async with grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
        calls = {m: channel.unary_unary(m) for m in {p.method for p in payloads}}  # bytes <-> bytes
        await channel.channel_ready()
        clock = time.perf_counter
        begin = clock()
        window_from = begin + warmup_s
        window_to = window_from + duration_s
        cpu_at: list[float] = []

        async def caller(index: int) -> None:
            nonlocal rows
            k = index
            n = len(payloads)
            while True:
                sent = clock()
                if sent >= window_to:
                    return
                payload = payloads[k % n]
                k += concurrency
                try:
                    await calls[payload.method](payload.body, timeout=timeout_s)
                    failed = None
                except grpc.aio.AioRpcError as exc:
                    failed = exc.code().name
                done = clock()
                if window_from <= done <= window_to:
                    if failed is None:
                        latencies.append(done - sent)
                        rows += payload.rows
                    else:
                        errors[failed] += 1

        async def ticker() -> None:
            while (now := clock()) < window_to:
                if on_tick is not None:
                    on_tick(now - begin)
                if not cpu_at and now >= window_from:
                    cpu_at.append(_cpu_seconds())
                wake = window_from if not cpu_at else window_to
                await asyncio.sleep(max(0.0, min(0.5, wake - now)))
            cpu_at.append(_cpu_seconds())
            if on_tick is not None:
                on_tick(window_to - begin)

        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        await tick
    client_cpu = cpu_at[-1] - cpu_at[0] if len(cpu_at) >= 2 else None
    return summarise(concurrency, duration_s, latencies, rows, errors, client_cpu)


async def call_once(url: str, payload: Payload, timeout_s: float = 60.0) -> bytes:
    """One request, its raw response bytes (errors raise grpc.aio.AioRpcError)."""
    async with grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
        return await channel.unary_unary(payload.method)(payload.body, timeout=timeout_s)


# -- command line -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="HOST:PORT of a v2 (or attnserve API) gRPC server")
    parser.add_argument("--repository", required=True, type=Path, help="model repository (for shapes)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--surface", choices=sorted(SURFACES), default="v2")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per level, not recorded")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per level, recorded")
    parser.add_argument("--pool", type=int, default=256, help="distinct random requests to cycle")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    workload = Workload(args.repository / args.model)
    payloads = SURFACES[args.surface]().payloads(workload, args.pool, np.random.default_rng(args.seed))
    for level in (int(c) for c in args.concurrency.split(",")):
        result = asyncio.run(run_level(args.url, payloads, level, warmup_s=args.warmup, duration_s=args.duration))
        print(json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
