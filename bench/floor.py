"""The transport floor: the same load against a grpc.aio server that does no work at all.

``python -m bench.floor --answer FILE`` serves ``inference.GRPCInferenceService/ModelInfer``
and answers every call with the bytes in FILE, without parsing the request, validating,
batching or computing anything. The scenario run gives it the real server's answer to one of
the run's requests (``capture_answer``), so the same bytes cross the loopback both ways, with
the same client, message limits and machine.

What it is for: the added-latency target compares attnserve's p50 at c=1 with in-process ONNX
Runtime. Part of that difference is what any Python grpc.aio server pays to receive a request
and send an answer on this machine; this measures that part in the same run, so a reader can
tell how much of the added latency is the server's own work (decoding, batching, the hand-off
to the inference thread, encoding) and how much is the transport. Its throughput at the top
concurrency level is likewise the most requests per second grpc.aio answers here with the load
generator sharing the cores.

Two modes (``--mode``): ``aio`` is grpc.aio as attnserve runs it (the same event loop choice,
uvloop when installed, and attnserve's default GRPC_EXPERIMENTS); ``sync`` is grpcio's
thread-pool server (``grpc.server``), the other way a Python service can answer gRPC. Both
answer from Python for every call, which is what separates them from a C++ front end such as
Triton's (bench/peers.py puts them beside it on a trivial graph).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import grpc

from bench.loadgen import CHANNEL_OPTIONS, Payload
from bench.server import ManagedProcess, ServerFailed

SERVICE = "inference.GRPCInferenceService"
LISTENING_LINE = re.compile(r"floor listening on (?P<url>\S+)")


def capture_answer(url: str, payload: Payload, timeout_s: float = 60.0) -> bytes:
    """The serialized answer of the server at ``url`` to ``payload`` (bytes in, bytes out)."""
    with grpc.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(payload.method, request_serializer=None, response_deserializer=None)
        return call(payload.body, timeout=timeout_s)


class FloorServer(ManagedProcess):
    """``python -m bench.floor`` on loopback with an OS-picked port; ready when it says so."""

    def __init__(self, answer_file: Path, log_path: Path, mode: str = "aio") -> None:
        super().__init__([sys.executable, "-m", "bench.floor", "--answer", str(answer_file), "--port", "0",
                          "--mode", mode], log_path)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.url = ""

    def wait_ready(self, timeout_s: float = 60.0) -> "FloorServer":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = LISTENING_LINE.search(self.log_text())
            if match:
                self.url = match["url"]
                return self
            if not self.alive():
                raise ServerFailed(f"floor server exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        raise ServerFailed(f"floor server not listening after {timeout_s:.0f}s:\n{self.tail()}")


async def serve(answer: bytes, host: str, port: int) -> None:
    async def model_infer(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return answer

    # No deserializer and no serializer: the request stays bytes and the answer is sent as is.
    handler = grpc.unary_unary_rpc_method_handler(model_infer, request_deserializer=None, response_serializer=None)
    server = grpc.aio.server(options=CHANNEL_OPTIONS)  # the same message limits as the client
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    print(f"floor listening on {host}:{bound} ({len(answer)} answer bytes)", flush=True)
    await server.wait_for_termination()


def serve_sync(answer: bytes, host: str, port: int, workers: int) -> None:
    from concurrent import futures

    def model_infer(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        return answer

    handler = grpc.unary_unary_rpc_method_handler(model_infer, request_deserializer=None, response_serializer=None)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=CHANNEL_OPTIONS,
                         handlers=(grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    server.start()
    print(f"floor listening on {host}:{bound} ({len(answer)} answer bytes, sync, {workers} threads)", flush=True)
    server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--answer", required=True, type=Path, help="file holding the serialized ModelInferResponse")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--mode", choices=("aio", "sync"), default="aio")
    parser.add_argument("--threads", type=int, default=8, help="sync mode's thread pool")
    args = parser.parse_args(argv)
    from service import eventloop
    from service.settings import Settings
    from service.transport import grpc_core

    grpc_core.configure(Settings().grpc_experiments)  # before grpc core starts, as the server does
    try:
        if args.mode == "sync":
            serve_sync(args.answer.read_bytes(), args.host, args.port, args.threads)
        else:
            eventloop.run(serve(args.answer.read_bytes(), args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
