"""Triton Inference Server (the ``tritonserver`` binary of PyPI's nvidia-pytriton 0.7.0) with
its Python backend, in ``.venv-triton``.

That wheel has no ONNX Runtime backend, so the same ONNX file is served by a Python-backend
model (bench/peer/triton_model.py) calling ONNX Runtime with attnserve's session options; the
model's config.pbtxt is attnserve's own, rewritten through the same ModelConfig proto:
``backend: "python"``, the dynamic_batching block and instance_group kept as they are (so
Triton's dynamic batcher runs with the same max_batch_size, preferred sizes and
max_queue_delay_microseconds), warm-up samples dropped, ragged inputs marked
``allow_ragged_batch``. Triton runs each instance in a ``triton_python_backend_stub`` child
process talking to the server over shared memory: its CPU is counted with the server's.

The binary runs bare (no PyTriton Python layer): the wheel's ``backends/`` is copied once into
the venv with the Python 3.11 stub put in ``backends/python/``; the venv's ``bin`` goes first on
PATH (the stub's embedded interpreter finds the venv from it) and the interpreter's LIBDIR
plus the wheel's ``nvidia_pytriton.libs`` on LD_LIBRARY_PATH. The wheel pins numpy<2, which only
PyTriton's Python layer needs, so it is installed without dependencies; numpy is 1.26 all the
same, because the backend stub is built against numpy 1 (with numpy 2 every output tensor
arrives empty: measured, 0 bytes of raw contents). ONNX Runtime is attnserve's version.
Triton speaks ModelConfig and ModelStatistics, so perf_analyzer drives it too.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

from google.protobuf import text_format

from bench.peer.base import Peer, make_venv
from bench.repos import read_config
from bench.server import REPO_ROOT

PYTRITON_VERSION = "0.7.0"
NUMPY_PIN = "numpy==1.26.4"  # the Python backend stub's numpy ABI
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


class TritonPeer(Peer):
    name = "triton"
    label = f"Triton (nvidia-pytriton {PYTRITON_VERSION} tritonserver, Python backend)"
    venv = REPO_ROOT / ".venv-triton"

    @classmethod
    def site_packages(cls) -> Path:
        return cls.venv / "lib" / f"python{PY}" / "site-packages"

    @classmethod
    def backends(cls) -> Path:
        return cls.venv / "triton-backends"

    @classmethod
    def binary(cls) -> Path:
        return cls.site_packages() / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @classmethod
    def ensure_venv(cls) -> Path:
        make_venv(cls.venv, [], cls.binary(), no_deps=(f"nvidia-pytriton=={PYTRITON_VERSION}",), numpy_pin=NUMPY_PIN)
        stub = cls.backends() / "python" / "triton_python_backend_stub"
        if not stub.is_file():
            wheel = cls.site_packages() / "pytriton" / "tritonserver"
            shutil.rmtree(cls.backends(), ignore_errors=True)
            shutil.copytree(wheel / "backends", cls.backends())
            shutil.copy2(wheel / "python_backend_stubs" / PY / "triton_python_backend_stub", stub)
        return cls.venv

    @classmethod
    def available(cls) -> str | None:
        if not (cls.backends() / "python" / "triton_python_backend_stub").is_file():
            return f"{cls.venv.name} missing (python -m bench peer-setup --peer triton)"
        return None

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        repository = self.folder / "repository"
        model_dir = repository / self.model.name
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(__file__).with_name("triton_model.py"), model_dir / "1" / "model.py")
        config = read_config(self.model.model_dir)
        config.ClearField("platform")
        config.backend = "python"
        config.ClearField("model_warmup")
        for tensor in config.input:
            if tensor.name in self.model.pad_values:
                tensor.allow_ragged_batch = True
        config.parameters["bench.onnx_path"].string_value = str(self.model.onnx_path)
        config.parameters["bench.runner"].string_value = self.model.runner_settings()
        (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")
        argv = [
            str(self.binary()), f"--model-repository={repository}", f"--backend-directory={self.backends()}",
            f"--grpc-port={self.grpc_port}", "--grpc-address=127.0.0.1",
            "--allow-http=false", "--allow-metrics=false", "--log-verbose=0",
        ]
        env = self.base_env()
        libs = [sysconfig.get_config_var("LIBDIR") or "", str(self.site_packages() / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
        return argv, env

    def describe(self) -> dict:
        batching = (f"Triton dynamic batcher: max_batch_size {self.model.max_batch_size}, preferred "
                    f"{list(self.model.preferred_batch_sizes)}, max_queue_delay_microseconds {self.model.max_queue_delay_us}"
                    if self.model.batching else "off (no dynamic_batching block)")
        return {
            "server": self.label, "runtime": "bench/peer/triton_model.py (ONNX Runtime, attnserve's session options)",
            "batching": batching, "instances": f"{self.model.instance_count} (one triton_python_backend_stub process each)",
            "ragged": "allow_ragged_batch, padded by the model" if self.model.ragged else "no",
            "intra_op_threads": self.model.intra_op_threads,
        }
