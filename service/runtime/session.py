"""Creating ONNX Runtime sessions: the options every instance shares, and load errors as ModelLoadError."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

from service.errors import ModelLoadError
from service.runtime.providers import ProviderEntry

log = logging.getLogger(__name__)


def default_intra_op_threads(instances: int, cores: int | None = None) -> int:
    """Threads per session so that ``instances`` sessions running at once use the cores, no more.

    ``instances`` sessions each with ``cores`` threads would oversubscribe the machine N-fold
    when they all run at once (and they do under load), which costs more in context switches
    than it gains. Each gets an equal share, at least one.
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, cores // max(1, instances))


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    # Parallelism across requests comes from instances (one session per executor thread), so
    # one graph runs its nodes in order and only spreads each node over the intra-op threads.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    # By default idle intra-op threads spin-wait for the next node. Measured here (2 cores, a
    # 64x256 @ 256x256 MatMul, 2 intra-op threads, 200 runs with 2 ms gaps): spinning used
    # 0.45 CPU-s in 0.45 s of wall time (a whole core burnt while idle) against 0.04 CPU-s
    # without, for about 50 us more latency per run (95 -> 145 us). A server's idle time is
    # the gRPC loop's and the other instances' time, so threads sleep when there is no work.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Reuses the allocation plan of the previous run when shapes repeat (the common batch
    # sizes do); a new shape just plans again.
    options.enable_mem_pattern = True
    return options


def open_session(
    model_path: Path, options: ort.SessionOptions, providers: list[ProviderEntry]
) -> ort.InferenceSession:
    """One InferenceSession; any failure to read or build the graph is a ModelLoadError naming the file."""
    if not model_path.is_file():
        raise ModelLoadError(f"ONNX model file {model_path} does not exist")
    try:
        return ort.InferenceSession(
            str(model_path),
            sess_options=options,
            providers=[name for name, _ in providers],
            provider_options=[opts for _, opts in providers],
        )
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        log.warning("cannot load ONNX model %s", model_path, exc_info=True)
        raise ModelLoadError(f"cannot load ONNX model {model_path}: {exc}") from exc
