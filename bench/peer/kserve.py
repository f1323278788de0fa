"""KServe's Python model server (PyPI's kserve 0.21) serving the same ONNX file, in ``.venv-kserve``.

``kserve.ModelServer`` with one ``kserve.Model`` (bench/peer/kserve_model.py) calling ONNX
Runtime with attnserve's session options, on its gRPC v2 endpoint (the Open Inference
Protocol, the same ModelInfer the load generator sends everyone). KServe's model server has no
dynamic batcher of its own (on Kubernetes, batching is an optional agent sidecar in front of
the pod), so every request runs alone: that is what a user of the Python server gets.
Per-request latency logging is off (KServe logs a line per request by default; no peer here
logs per request).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.peer.base import Peer, free_port, make_venv
from bench.server import REPO_ROOT

KSERVE_VERSION = "0.21.0"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


class KServePeer(Peer):
    name = "kserve"
    label = f"KServe {KSERVE_VERSION} ModelServer"
    venv = REPO_ROOT / ".venv-kserve"

    @classmethod
    def ensure_venv(cls) -> Path:
        return make_venv(cls.venv, [f"kserve=={KSERVE_VERSION}"], cls.venv / "lib" / f"python{PY}" / "site-packages" / "kserve")

    @classmethod
    def available(cls) -> str | None:
        probe = cls.venv / "lib" / f"python{PY}" / "site-packages" / "kserve"
        return None if probe.is_dir() else f"{cls.venv.name} missing (python -m bench peer-setup --peer kserve)"

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            str(self.venv / "bin" / "python"), "-m", "bench.peer.kserve_model",
            "--model_name", self.model.name, "--onnx", str(self.model.onnx_path), "--runner", self.model.runner_settings(),
            "--grpc_port", str(self.grpc_port), "--http_port", str(free_port()), "--workers", "1",
            "--enable_latency_logging", "false",
        ]
        return argv, self.base_env()

    def describe(self) -> dict:
        return {
            "server": self.label, "runtime": "bench/peer/kserve_model.py (kserve.Model, ONNX Runtime, attnserve's session options)",
            "batching": "none (KServe's model server has no dynamic batcher; each request runs alone)",
            "workers": 1, "intra_op_threads": self.model.intra_op_threads,
        }
