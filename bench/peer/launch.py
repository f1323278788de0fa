"""Start the peer: MLServer (pinned) in its own virtual environment, with adaptive batching.

MLServer pulls in FastAPI, uvicorn, gevent, OpenTelemetry and more; none of it belongs in
attnserve's environment, so it lives in ``.venv-peer`` (git-ignored), created on first use by
``ensure_venv`` (``python -m bench peer-setup``). The peer is configured like the attnserve
model it is compared with: the same ONNX file and session options, ``max_batch_size`` equal
to the config's, ``max_batch_time`` equal to its ``max_queue_delay_microseconds``, and
MLServer's default of one parallel inference worker.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.server import REPO_ROOT, ManagedProcess, ServerFailed

PEER_VENV = REPO_ROOT / ".venv-peer"
MLSERVER_VERSION = "1.7.1"
# Same onnxruntime and numpy as attnserve's environment, so the graph runs the same code.
# uvloop 0.22 breaks MLServer 1.7.1 workers ("There is no current event loop"; SeldonIO/MLServer#2286).
PEER_REQUIREMENTS = (f"mlserver=={MLSERVER_VERSION}", "uvloop==0.21.0")


def peer_python(venv: Path = PEER_VENV) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path = PEER_VENV) -> Path:
    """The peer's virtual environment, created and filled if missing (needs PyPI)."""
    python = peer_python(venv)
    mlserver = venv / "bin" / "mlserver"
    if mlserver.is_file():
        return venv
    import numpy
    import onnxruntime

    print(f"[bench] creating {venv} with mlserver=={MLSERVER_VERSION} (once)", file=sys.stderr, flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS,
         f"onnxruntime=={onnxruntime.__version__}", f"numpy=={numpy.__version__}"],
        check=True,
    )
    return venv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_settings(
    folder: Path, model: str, onnx_path: Path, *, max_batch_size: int, max_batch_time_s: float,
    intra_op_threads: int, parallel_workers: int = 1,
) -> tuple[Path, int]:
    """MLServer's settings.json and <model>/model-settings.json; returns (folder, gRPC port)."""
    folder.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port()
    settings = {
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": parallel_workers,
        "load_models_at_startup": True,
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    model_folder = folder / model
    model_folder.mkdir(exist_ok=True)
    model_settings = {
        "name": model,
        "implementation": "bench.peer.runtime.OnnxModel",
        "max_batch_size": max_batch_size,
        "max_batch_time": max_batch_time_s,
        "parameters": {"uri": str(onnx_path.resolve()), "extra": {"intra_op_threads": intra_op_threads}},
    }
    (model_folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2), encoding="utf-8")
    return folder, grpc_port


class PeerServer(ManagedProcess):
    def __init__(self, folder: Path, grpc_port: int, model: str, log_path: Path, venv: Path = PEER_VENV) -> None:
        env = {
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "PYTHONPATH": str(REPO_ROOT),  # bench.peer.runtime and service.runtime.session
            "PYTHONUNBUFFERED": "1",
            "HOME": str(Path.home()),
        }
        super().__init__([str(venv / "bin" / "mlserver"), "start", str(folder)], log_path, env)
        self.url = f"127.0.0.1:{grpc_port}"
        self.model = model

    def wait_ready(self, timeout_s: float = 180.0) -> "PeerServer":
        import grpc

        from service.proto.inference import grpc_service_pb2 as pb
        from service.proto.inference import grpc_service_pb2_grpc as pb_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                if not self.alive():
                    raise ServerFailed(f"MLServer exited with {self.proc.returncode}:\n{self.tail()}")
                try:
                    if stub.ModelReady(pb.ModelReadyRequest(name=self.model), timeout=2).ready:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
        raise ServerFailed(f"MLServer not ready after {timeout_s:.0f}s:\n{self.tail()}")
