"""MLServer 1.7.1 with adaptive batching, in ``.venv-peer``.

MLServer pulls in FastAPI, uvicorn, gevent, OpenTelemetry and more; none of it belongs in
attnserve's environment. Configured like the attnserve model: ``max_batch_size`` equal to the
config's, ``max_batch_time`` equal to its ``max_queue_delay_microseconds``, MLServer's default
of one parallel inference worker (a child process: its CPU is counted with the server's).

Ragged models (the encoder) run without adaptive batching: MLServer's batcher concatenates the
requests' flat data and adds up their first dims, which for sequences of different lengths
gives a tensor of the wrong shape; it has no padding. Each request then runs alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.peer.base import Peer, free_port, make_venv
from bench.server import REPO_ROOT

MLSERVER_VERSION = "1.7.1"
# uvloop 0.22 breaks MLServer 1.7.1 workers ("There is no current event loop"; SeldonIO/MLServer#2286).
REQUIREMENTS = [f"mlserver=={MLSERVER_VERSION}", "uvloop==0.21.0"]


class MLServerPeer(Peer):
    name = "mlserver"
    label = f"MLServer {MLSERVER_VERSION}"
    venv = REPO_ROOT / ".venv-peer"
    parallel_workers = 1

    @classmethod
    def ensure_venv(cls) -> Path:
        return make_venv(cls.venv, REQUIREMENTS, cls.venv / "bin" / "mlserver")

    @classmethod
    def available(cls) -> str | None:
        return None if (cls.venv / "bin" / "mlserver").is_file() else f"{cls.venv.name} missing (python -m bench peer-setup)"

    @property
    def adaptive_batching(self) -> bool:
        return self.model.batching and not self.model.ragged

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        settings = {
            "host": "127.0.0.1", "grpc_port": self.grpc_port, "http_port": free_port(), "metrics_port": free_port(),
            "parallel_workers": self.parallel_workers, "load_models_at_startup": True, "debug": False,
        }
        (self.folder / "settings.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
        model_folder = self.folder / self.model.name
        model_folder.mkdir(exist_ok=True)
        model_settings = {
            "name": self.model.name,
            "implementation": "bench.peer.mlserver_runtime.OnnxModel",
            "parameters": {"uri": str(self.model.onnx_path), "extra": {"runner": self.model.runner_settings()}},
        }
        if self.adaptive_batching:
            model_settings |= {"max_batch_size": self.model.max_batch_size,
                               "max_batch_time": self.model.max_queue_delay_us / 1e6}
        (model_folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2), encoding="utf-8")
        return [str(self.venv / "bin" / "mlserver"), "start", str(self.folder)], self.base_env()

    def describe(self) -> dict:
        return {
            "server": self.label, "runtime": "bench/peer/mlserver_runtime.py (ONNX Runtime, attnserve's session options)",
            "adaptive_batching": (f"max_batch_size {self.model.max_batch_size}, max_batch_time "
                                  f"{self.model.max_queue_delay_us / 1e6:g} s") if self.adaptive_batching
                                 else "off" + (" (ragged inputs: MLServer cannot pad)" if self.model.ragged else ""),
            "parallel_workers": self.parallel_workers, "intra_op_threads": self.model.intra_op_threads,
        }
