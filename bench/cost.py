"""Server CPU per request, old code against new, alternating in one run (before/after files).

``python -m bench.cost --tree OLD --tree NEW --model identity --concurrency 1,32 --rounds 3``
starts ``python -m service serve`` from each source tree in turn (a git worktree of the old
revision, say ``git worktree add /tmp/old 2d936f7``), on a repository holding a trivial ONNX
model (``identity``: y = x, [batch, 16] FP32, batching configured like the SE-CNN's) and,
with ``--repository``, any exported one. A grpc.aio closed loop sends pre-serialised
ModelInfer requests; the server's CPU is read from /proc (utime + stime of the server process
and its children) before and after each level, so the load generator's own CPU never counts.

Why alternate: on this shared VM the same code drifts 20-30% within an hour; rounds A, B, A, B
put both trees under the same conditions, and the spread between rounds says how far to trust
a difference. Writes a JSON and a Markdown table with the machine line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench import machine

READY = re.compile(r"attnserve ready: grpc=(\S+)")
CONFIG = """name: "identity"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 16 ] } ]
dynamic_batching { preferred_batch_size: [ 8, 16, 32, 64 ] max_queue_delay_microseconds: 500 }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def trivial_repository(root: Path) -> Path:
    """``root/identity``: one Identity node, batch dimension dynamic (needs onnx: bench only)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "identity" / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, root / "identity" / "1" / "model.onnx")
    (root / "identity" / "config.pbtxt").write_text(CONFIG, encoding="utf-8")
    return root


def process_tree_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` and every descendant, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():  # /proc/PID/task/*/children is not on every kernel
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    children: dict[int, list[int]] = {}
    for child, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / tick
        todo += children.get(current, [])
    return total


def request_bytes(model: str, inputs: dict[str, np.ndarray]) -> bytes:
    from service.proto.inference import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    return request.SerializeToString()


async def closed_loop(url: str, body: bytes, concurrency: int, count: int, pid: int | list[int],
                      channels: int = 1) -> dict:
    """``count`` ModelInfer calls from ``concurrency`` callers; server CPU summed over the process
    tree(s) of ``pid``. ``channels`` > 1 opens that many connections (callers spread over them),
    for servers that share one port (bench/reuseport.py): one channel is one connection."""
    pids = [pid] if isinstance(pid, int) else list(pid)
    # A local subchannel pool per channel: otherwise grpc shares one connection among them.
    options = [("grpc.use_local_subchannel_pool", 1)] if channels > 1 else []
    opened = [grpc.aio.insecure_channel(url, options=options) for _ in range(channels)]
    try:
        calls = [c.unary_unary("/inference.GRPCInferenceService/ModelInfer") for c in opened]
        for k in range(200):  # warm-up, not counted
            await calls[k % channels](body)
        left, latencies = [count], []

        async def caller(index: int) -> None:
            call = calls[index % channels]
            while left[0] > 0:
                left[0] -= 1
                started = time.perf_counter()
                await call(body)
                latencies.append(time.perf_counter() - started)

        cpu0, wall0 = sum(process_tree_cpu_s(p) for p in pids), time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        wall, cpu = time.perf_counter() - wall0, sum(process_tree_cpu_s(p) for p in pids) - cpu0
    finally:
        for channel in opened:
            await channel.close()
    latencies.sort()
    return {
        "concurrency": concurrency, "requests": count, "req_per_s": count / wall,
        "server_cpu_us_per_request": cpu / count * 1e6,
        "p50_ms": latencies[len(latencies) // 2] * 1e3, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


def measure(tree: Path, repository: Path, model: str, levels: list[int], count: int) -> list[dict]:
    command = [sys.executable, "-m", "service", "serve", "--model-repository", str(repository),
               "--grpc-port", "0", "--allow-metrics", "false", "--load-model", model]
    with tempfile.TemporaryFile("w+") as log:
        # HTTP on an OS-picked port through the environment (a tree from before HTTP ignores it).
        env = {**os.environ, "ATTNSERVE_HTTP_PORT": "0"}
        server = subprocess.Popen(command, cwd=tree, stderr=log, stdout=log, text=True, env=env)
        try:
            deadline, url = time.monotonic() + 120, None
            while url is None:
                log.seek(0)
                found = READY.search(log.read())
                url = found.group(1) if found else None
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"server from {tree} did not start:\n{log.read()[-2000:]}")
                time.sleep(0.1)
            shape = (1, 16) if model == "identity" else (1, 1, 28, 28)
            body = request_bytes(model, {"x" if model == "identity" else "image": np.random.rand(*shape).astype(np.float32)})
            return [asyncio.run(closed_loop(url, body, c, count, server.pid)) for c in levels]
        finally:
            server.terminate()
            server.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, type=Path, help="source tree (repeat: before, after)")
    parser.add_argument("--repository", type=Path, help="model repository (default: a temporary one with identity)")
    parser.add_argument("--model", default="identity")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    repository = args.repository or trivial_repository(Path(tempfile.mkdtemp(prefix="bench-cost-")))
    load_before = machine.load_average()
    runs = []
    for round_number in range(args.rounds):
        for tree in args.tree:
            for level in measure(tree.resolve(), repository, args.model, levels, args.requests):
                row = {"round": round_number + 1, "tree": str(tree), **level}
                runs.append(row)
                print(f"round {row['round']} {tree}: c={row['concurrency']:3d} {row['req_per_s']:7.0f} req/s "
                      f"{row['server_cpu_us_per_request']:6.0f} us CPU/request p50 {row['p50_ms']:.2f} ms "
                      f"p99 {row['p99_ms']:.2f} ms", flush=True)
    result = {"machine": machine.describe("cpu"), "load_average": [load_before, machine.load_average()],
              "model": args.model, "runs": runs}
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    return 0


def markdown(result: dict) -> str:
    lines = [f"# Server CPU per request, alternating trees: {result['model']}", "",
             f"Machine: {machine.one_line(result['machine'])}; load average before/after: "
             f"{result['load_average'][0]} / {result['load_average'][1]}", "",
             "| round | tree | c | req/s | server CPU µs/request | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['round']} | {r['tree']} | {r['concurrency']} | {r['req_per_s']:.0f} | "
                     f"{r['server_cpu_us_per_request']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
