"""One attnserve process against N on one port (SO_REUSEPORT), alternating, in one run.

``python -m bench.reuseport --processes 1,2 --concurrency 16,64 --rounds 2 --out bench/results/reuseport``
starts N servers on the same gRPC port (grpc core sets SO_REUSEPORT on Linux, so the kernel
spreads *connections* among them, each process batching on its own), on the trivial identity
graph, and drives them from 8 channels (one channel is one connection: it would reach one
process only). Server CPU is the sum over all N process trees, from /proc. Rounds alternate
1, N, 1, N so both see the same machine.

What it answers: whether several processes with batching per process beat one. With the load
generator on the same cores, only where cores sit idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import cost, machine

CHANNELS = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(repository: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "ATTNSERVE_HTTP_PORT": "0"}
    server = subprocess.Popen([sys.executable, "-m", "service", "serve", "--model-repository", str(repository),
                               "--grpc-port", str(port), "--allow-metrics", "false", "--load-model", "identity"],
                              stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while not cost.READY.search(log.read_text()):
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reuseport", description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-reuseport-"))
    repository = cost.trivial_repository(work)
    body = cost.request_bytes("identity", {"x": np.random.rand(1, 16).astype(np.float32)})
    runs, load = [], [machine.load_average()]
    for round_number in range(1, args.rounds + 1):
        for n in (int(p) for p in args.processes.split(",")):
            port = _free_port()
            servers = [start(repository, port, work / f"server-{round_number}-{n}-{i}.log") for i in range(n)]
            try:
                for c in (int(x) for x in args.concurrency.split(",")):
                    row = {"round": round_number, "processes": n,
                           **asyncio.run(cost.closed_loop(f"127.0.0.1:{port}", body, c, args.requests,
                                                           [s.pid for s in servers], channels=CHANNELS))}
                    runs.append(row)
                    print(f"round {round_number} processes {n} c={c}: {row['req_per_s']:.0f} req/s "
                          f"{row['server_cpu_us_per_request']:.0f} us CPU/request p50 {row['p50_ms']:.2f} ms", flush=True)
            finally:
                for server in servers:
                    server.terminate()
                for server in servers:
                    server.wait(60)
    load.append(machine.load_average())
    result = {"machine": machine.describe("cpu"), "load_average": load, "channels": CHANNELS, "runs": runs}
    lines = ["# One process against several on one port (SO_REUSEPORT), trivial graph", "",
             f"Machine: {machine.one_line(result['machine'])}; load average before/after {load[0]} / {load[1]}; "
             f"{CHANNELS} client channels; rounds alternate.", "",
             "| round | processes | c | req/s | server CPU µs/request | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['processes']} | {r['concurrency']} | {r['req_per_s']:.0f} | "
              f"{r['server_cpu_us_per_request']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for r in runs]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
