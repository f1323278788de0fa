"""What every peer shares: the model it serves, its virtual environment, the process.

A peer module (mlserver.py, triton.py, kserve.py) defines one :class:`Peer` subclass that
writes its own configuration for a :class:`PeerModel` in ``prepare`` and names its command;
the harness then does the same with each of them::

    peer = TritonPeer(model, work / "triton").start()   # prepare + launch
    peer.wait_ready()                                  # ModelReady over v2 gRPC
    peer.url, peer.server_pids()                       # what the load generator and CPU accounting use
    peer.stop()

Each peer lives in its own virtual environment at the repository root (git-ignored), created
on first use by ``ensure_venv`` with the same onnxruntime and numpy as attnserve's, so the
graph runs the same code everywhere and only the serving around it differs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from bench.peer.onnx_batch import settings_json
from bench.server import REPO_ROOT, ManagedProcess, ServerFailed


@dataclass(frozen=True)
class PeerModel:
    """The attnserve model a peer serves, with the batching settings of its config.pbtxt."""

    name: str
    model_dir: Path  # the attnserve model folder (config.pbtxt)
    onnx_path: Path
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int  # 0 with no dynamic_batching block
    batching: bool  # dynamic_batching present
    instance_count: int
    intra_op_threads: int
    pad_values: dict[str, float] = field(default_factory=dict)
    variable_output_axes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def from_workload(cls, workload, onnx_path: Path, intra_op_threads: int) -> "PeerModel":
        spec = workload.spec
        batching = workload.describe()["dynamic_batching"]
        return cls(
            name=workload.name, model_dir=workload.model_dir, onnx_path=Path(onnx_path).resolve(),
            max_batch_size=spec.max_batch_size,
            preferred_batch_sizes=tuple((batching or {}).get("preferred_batch_size", ())),
            max_queue_delay_us=int((batching or {}).get("max_queue_delay_microseconds", 0)),
            batching=batching is not None, instance_count=spec.instance_count,
            intra_op_threads=intra_op_threads, pad_values=dict(workload.pad_values),
            variable_output_axes={o.name: o.variable_axes for o in spec.outputs if o.variable_axes},
        )

    @property
    def ragged(self) -> bool:
        return bool(self.pad_values)

    def runner_settings(self) -> str:
        """JSON for ``OnnxBatchRunner.from_json`` inside the peer."""
        return settings_json(self.intra_op_threads, self.pad_values, self.variable_output_axes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_venv(venv: Path, requirements: list[str], probe: Path, no_deps: tuple[str, ...] = (),
              numpy_pin: str | None = None) -> Path:
    """``venv`` with ``requirements`` (+ attnserve's onnxruntime and numpy), unless ``probe`` exists.

    ``no_deps``: packages installed without their dependencies first (a wheel whose pins clash
    with the numpy we need, while the part we use does not need them). ``numpy_pin``: another
    numpy than attnserve's, where a peer's compiled parts need it.
    """
    if probe.exists():
        return venv
    import numpy
    import onnxruntime

    print(f"[bench] creating {venv.name} with {' '.join([*no_deps, *requirements])} (once)", file=sys.stderr, flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if no_deps:
        subprocess.run([*pip, "--no-deps", *no_deps], check=True)
    subprocess.run([*pip, *requirements, f"onnxruntime=={onnxruntime.__version__}", numpy_pin or f"numpy=={numpy.__version__}"],
                   check=True)
    return venv


class Peer(ManagedProcess):
    """One peer server process (and its children) on loopback, serving one model over v2 gRPC."""

    name: ClassVar[str]  # the driver name: mlserver, triton, kserve
    label: ClassVar[str]  # for results tables
    venv: ClassVar[Path]
    ready_timeout_s: ClassVar[float] = 180.0

    def __init__(self, model: PeerModel, folder: Path) -> None:
        self.model = model
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.grpc_port = free_port()
        argv, env = self.prepare()
        super().__init__(argv, self.folder / f"{self.name}.log", env)
        self.url = f"127.0.0.1:{self.grpc_port}"

    # -- what each peer supplies ----------------------------------------------------------
    @classmethod
    def ensure_venv(cls) -> Path:
        raise NotImplementedError

    @classmethod
    def available(cls) -> str | None:
        """None when the peer's environment exists, else why not (tests skip on it)."""
        raise NotImplementedError

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        """Write the peer's configuration under ``self.folder``; return (argv, environment)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """How it was configured, for the results file."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
            "PYTHONPATH": str(REPO_ROOT),  # bench.peer.* and service.runtime.session
            "PYTHONUNBUFFERED": "1",
            "HOME": str(Path.home()),
        }

    def server_pids(self) -> list[int]:
        """The server and every descendant (workers, backend stubs): what CPU accounting sums."""
        return self.stats.tree() if self.stats else []

    def wait_ready(self, timeout_s: float | None = None) -> "Peer":
        import grpc

        from service.proto.inference import grpc_service_pb2 as pb
        from service.proto.inference import grpc_service_pb2_grpc as pb_grpc

        timeout_s = timeout_s or self.ready_timeout_s
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                if not self.alive():
                    raise ServerFailed(f"{self.label} exited with {self.proc.returncode}:\n{self.tail()}")
                try:
                    if stub.ModelReady(pb.ModelReadyRequest(name=self.model.name), timeout=2).ready:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.25)  # polling a process we do not control: no event to wait on
        raise ServerFailed(f"{self.label} not ready after {timeout_s:.0f}s:\n{self.tail()}")
