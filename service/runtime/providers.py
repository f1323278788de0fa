"""Which ONNX Runtime execution providers a model runs on: CUDA when asked for and present, else CPU.

``provider`` is the ``--provider`` setting: ``auto`` (CUDA when onnxruntime offers it, otherwise
CPU with one INFO line), ``cpu``, or ``cuda`` (no CUDA is a load error, never a silent CPU run).
The composition root can call :func:`resolve_provider` once and hand the result to every
runner, so the fallback line is logged once per process instead of once per model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import onnxruntime as ort

from service.errors import ModelLoadError

log = logging.getLogger(__name__)

ProviderSetting = Literal["auto", "cpu", "cuda"]
Resolved = Literal["cpu", "cuda"]

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"

# One entry of the ``providers=`` list InferenceSession takes: (name, options).
ProviderEntry = tuple[str, dict[str, str]]


def resolve_provider(setting: str, available: Sequence[str] | None = None) -> Resolved:
    """Turn the setting into the provider to use; ``available`` defaults to what onnxruntime offers."""
    have = list(ort.get_available_providers() if available is None else available)
    if setting == "cpu":
        return "cpu"
    if setting == "cuda":
        if CUDA_EP not in have:
            raise ModelLoadError(
                f"provider 'cuda' was requested but onnxruntime has no {CUDA_EP} (providers {have}); "
                "install onnxruntime-gpu with a matching CUDA/cuDNN, or use --provider auto|cpu"
            )
        return "cuda"
    if setting == "auto":
        if CUDA_EP in have:
            return "cuda"
        log.info("CUDA not available (onnxruntime has providers %s); serving on CPU", have)
        return "cpu"
    raise ModelLoadError(f"unknown provider {setting!r}: one of auto, cpu, cuda")


def model_provider(server: Resolved, instance_kind: str, model: str) -> Resolved:
    """The device one model runs on: the server's provider, narrowed by its instance_group kind.

    As in Triton, KIND_CPU keeps a model on CPU even on a CUDA server. KIND_GPU on a server
    without CUDA serves on CPU with a warning (Triton would refuse the model; a CPU replica of
    the GPU image's repository should still serve). KIND_AUTO follows the server.
    """
    if instance_kind == "KIND_CPU" and server == "cuda":
        log.info("model %r: instance_group kind KIND_CPU, served on CPU on this CUDA server", model)
        return "cpu"
    if instance_kind == "KIND_GPU" and server == "cpu":
        log.warning(
            "model %r: instance_group kind KIND_GPU, but this server runs on CPU "
            "(--provider cpu, or no CUDA provider); serving it on CPU", model
        )
    return server


def cuda_provider_options(device_id: int) -> dict[str, str]:
    """CUDA EP options for a server whose batch size changes from one execution to the next.

    Values are strings: onnxruntime stringifies them anyway, and "1" parses on every version.
    """
    return {
        "device_id": str(device_id),
        # EXHAUSTIVE (the default) benchmarks every cuDNN conv algorithm for each new input
        # shape; with dynamic batching nearly every batch size is new, so the first requests
        # at each size would stall for the search. HEURISTIC picks from cuDNN's tables instead.
        "cudnn_conv_algo_search": "HEURISTIC",
        # Copies on the compute stream: no cross-stream races (onnxruntime issue #4829).
        "do_copy_in_default_stream": "1",
        # kNextPowerOfTwo doubles the arena at every growth; varying batch sizes would then
        # reserve up to twice the memory the largest batch needs. Grow by what is asked.
        "arena_extend_strategy": "kSameAsRequested",
        # TF32 matmuls/convs on Ampere and later (onnxruntime's default, stated here so it is a
        # decision): fp32 results stay within about 1e-4 of the CPU reference, which is the
        # tolerance the GPU checks use.
        "use_tf32": "1",
    }


def execution_providers(resolved: Resolved, device_id: int = 0) -> list[ProviderEntry]:
    """The ``providers=`` list for InferenceSession.

    CPU stays last on the CUDA list so nodes CUDA has no kernel for still run (onnxruntime places
    them on CPU and copies across); the GPU checks verify every node of our models lands on CUDA.
    """
    if resolved == "cuda":
        return [(CUDA_EP, cuda_provider_options(device_id)), (CPU_EP, {})]
    return [(CPU_EP, {})]
