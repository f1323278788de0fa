"""Helpers for the integration tier: valid inputs, the in-process reference, status checks, waits.

Expected outputs are never written down: ``Reference`` runs the same ``model.onnx`` the server
loaded, in this process, with onnxruntime, and responses are compared against it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from export.defaults import LANGID_FAMILY
from service.model_config import ModelSpec, read_config, to_spec
from service.proto.inference import model_config_pb2 as mc

SAGAN, SECNN, ENCODER = "sagan_generator", "se_cnn_classifier", "transformer_encoder"
CBAM, STN, SASA = "cbam_classifier", "stn_classifier", "sasa_classifier"
VISION = (CBAM, STN, SASA)  # the vision-attention classifiers (issue 14)
LANGID = LANGID_FAMILY  # the attention family (issue 15): langid_dot, _additive, _mha, _pair
MODELS = (SAGAN, SECNN, ENCODER, *VISION, *LANGID)
RTOL, ATOL = 1e-4, 1e-5
# Byte-level tokens (export/models/transformer_encoder.py): 0 pad, 1 BOS, 2 EOS, byte b is 4 + b.
PAD, BOS, EOS, BYTE_OFFSET = 0, 1, 2, 4
# A batching delay of 5 minutes: a held batch runs only when full or preferred (or on a drain),
# never because its delay ran out while a test runs.
HOLD_US = 300_000_000
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
POLL_S = 0.02


def spec_of(repository: Path, model: str) -> ModelSpec:
    return to_spec(read_config(repository / model))


def label_count(repository: Path, model: str) -> int:
    return len((repository / model / "labels.txt").read_text(encoding="utf-8").split())


def token_ids(length: int, rng: np.random.Generator) -> np.ndarray:
    """BOS, ``length - 2`` printable bytes, EOS: valid ids of a byte-level vocabulary."""
    body = rng.integers(32, 127, size=max(length - 2, 0)) + BYTE_OFFSET
    return np.concatenate([[BOS], body, [EOS]]).astype(np.int64)[:length]


def sample_inputs(
    repository: Path, model: str, rows: int, rng: np.random.Generator, length: int = 12
) -> dict[str, np.ndarray]:
    """Valid inputs for ``model`` (shapes from its config.pbtxt), ``rows`` rows."""
    spec = spec_of(repository, model)
    arrays: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        dims = tuple(length if d == -1 else d for d in tensor.dims)
        if tensor.name in ("input_ids", "query_ids", "source_ids"):  # no id 0: pair models read it as padding
            arrays[tensor.name] = np.stack([token_ids(length, rng) for _ in range(rows)])
        elif tensor.name == "attention_mask":
            arrays[tensor.name] = np.ones((rows, *dims), dtype=np.int64)
        elif tensor.name == "class_label":
            arrays[tensor.name] = rng.integers(0, label_count(repository, model), size=(rows, *dims)).astype(np.int64)
        elif tensor.dtype.kind == "f":
            arrays[tensor.name] = rng.standard_normal((rows, *dims)).astype(tensor.dtype)
        else:
            raise AssertionError(f"no sample rule for {model}.{tensor.name}")
    return arrays


def infer_inputs(arrays: Mapping[str, np.ndarray], module: Any = grpcclient) -> list:
    """tritonclient InferInput objects (``module`` is tritonclient.grpc or .grpc.aio)."""
    inputs = []
    for name, array in arrays.items():
        item = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


def requested(names: Iterable[str], module: Any = grpcclient) -> list:
    return [module.InferRequestedOutput(name) for name in names]


class Reference:
    """onnxruntime in this process, on the same files the server serves."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self._sessions: dict[str, ort.InferenceSession] = {}

    def session(self, model: str) -> ort.InferenceSession:
        if model not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self._sessions[model] = ort.InferenceSession(
                str(self.repository / model / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[model]

    def run(self, model: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session(model)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, dict(arrays))))


def assert_matches(result: Any, expected: Mapping[str, np.ndarray], names: Iterable[str] | None = None) -> None:
    """``result`` (an InferResult) holds ``expected``'s outputs, within fp32 tolerance."""
    for name in names or expected:
        got = result.as_numpy(name)
        assert got is not None, f"response has no output {name!r}"
        want = expected[name]
        assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


def status_of(error: BaseException) -> str:
    """The gRPC status name of a tritonclient or grpcio error ('INVALID_ARGUMENT', ...)."""
    if isinstance(error, InferenceServerException):
        status = error.status() or ""
        return status.removeprefix("StatusCode.")
    if isinstance(error, grpc.RpcError):
        return error.code().name  # type: ignore[attr-defined]
    raise AssertionError(f"not a gRPC error: {error!r}")


def message_of(error: BaseException) -> str:
    if isinstance(error, InferenceServerException):
        return error.message() or ""
    if isinstance(error, grpc.RpcError):
        return error.details() or ""  # type: ignore[attr-defined]
    return str(error)


@dataclass(frozen=True)
class Stats:
    inference_count: int
    execution_count: int
    success: int
    fail: int
    batch_sizes: dict[int, int]  # batch size -> executions


def model_stats(client: grpcclient.InferenceServerClient, model: str) -> Stats:
    reply = client.get_inference_statistics(model)
    (stats,) = [s for s in reply.model_stats if s.name == model]
    return Stats(
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        success=stats.inference_stats.success.count,
        fail=stats.inference_stats.fail.count,
        batch_sizes={b.batch_size: b.compute_infer.count for b in stats.batch_stats},
    )


def _check(condition: Callable[[], Any], deadline: float, timeout: float, what: str) -> Any:
    """One poll: ``condition()``'s value; fails once the deadline has passed without a truthy one."""
    value = condition()
    if not value and time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
    return value


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll an RPC-backed ``condition`` until it is truthy (readiness-style wait, not a delay)."""
    deadline = time.monotonic() + timeout
    while not (value := _check(condition, deadline, timeout, what)):
        time.sleep(POLL_S)
    return value


async def wait_until_async(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """``wait_until`` for async tests: yields to the event loop between polls so that the
    aio calls being waited on keep making progress."""
    deadline = time.monotonic() + timeout
    while not (value := _check(condition, deadline, timeout, what)):
        await asyncio.sleep(POLL_S)
    return value


def wait_for_the_delay(config: mc.ModelConfig) -> None:
    """Triton's batching rule exactly: a lone request waits ``max_queue_delay`` too.

    attnserve otherwise runs a request that arrives to an idle model at once
    (``attnserve.dispatch_when_idle``), so a test that holds requests in the queue with a long
    delay turns that off.
    """
    config.parameters["attnserve.dispatch_when_idle"].string_value = "false"
