"""Before timing anything: the server under test answers correctly.

A handful of the load generator's own requests go out at once (so they share batches, with
padding for sequences) and each answer is compared with ONNX Runtime run in this process on
the same file, one request at a time. A server that is fast but wrong fails the scenario
here, before any figure is written. attnserve API answers are checked for shape (one result
per item, no error), since their preprocessing happens server-side.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.loadgen import Payload, call_once, v2_request
from service.dtypes import V2_TO_NUMPY

RTOL, ATOL = 1e-3, 1e-4  # batched vs single-row runs differ in summation order, no more


class CheckFailed(AssertionError):
    pass


def decode_v2_response(body: bytes) -> dict[str, np.ndarray]:
    from service.proto.inference import grpc_service_pb2 as pb

    response = pb.ModelInferResponse.FromString(body)
    arrays = {}
    for index, tensor in enumerate(response.outputs):
        dtype = V2_TO_NUMPY[tensor.datatype]
        if index < len(response.raw_output_contents):
            data = np.frombuffer(response.raw_output_contents[index], dtype=dtype)
        else:  # typed contents (servers that do not answer raw)
            field = "fp32_contents" if dtype.kind == "f" else "int64_contents"
            data = np.asarray(getattr(tensor.contents, field), dtype=dtype)
        arrays[tensor.name] = data.reshape(tuple(tensor.shape))
    return arrays


def reference_session(model_path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


async def _gather(url: str, payloads: list[Payload]) -> list[bytes]:
    return list(await asyncio.gather(*(call_once(url, p) for p in payloads)))


def verify_v2(url: str, model: str, model_path: Path, samples: list[dict[str, np.ndarray]]) -> dict:
    """Send ``samples`` concurrently over ModelInfer; compare every output with in-process ORT."""
    from service.proto.inference import grpc_service_pb2 as pb

    method = f"/{pb.DESCRIPTOR.services_by_name['GRPCInferenceService'].full_name}/ModelInfer"
    payloads = [Payload(method, v2_request(model, s).SerializeToString(), 1) for s in samples]
    bodies = asyncio.run(_gather(url, payloads))
    session = reference_session(model_path)
    names = [o.name for o in session.get_outputs()]
    worst = 0.0
    for sample, body in zip(samples, bodies):
        got = decode_v2_response(body)
        want = dict(zip(names, session.run(names, sample)))
        for name, expected in want.items():
            if name not in got:
                raise CheckFailed(f"{model}: response has no output {name!r}")
            actual = got[name]
            if actual.shape != expected.shape:
                raise CheckFailed(f"{model}.{name}: shape {actual.shape}, in-process ORT gives {expected.shape}")
            if not np.allclose(actual, expected, rtol=RTOL, atol=ATOL):
                error = float(np.max(np.abs(actual.astype(np.float64) - expected)))
                raise CheckFailed(f"{model}.{name}: differs from in-process ORT by up to {error:.3g}")
            if expected.size:
                worst = max(worst, float(np.max(np.abs(actual.astype(np.float64) - expected))))
    return {"requests": len(samples), "outputs_compared": names, "max_abs_error": worst, "ok": True}


def verify_api(url: str, payloads: list[Payload]) -> dict:
    """attnserve API answers parse, carry one result per item and no error."""
    from service.proto.attnserve.v1 import attnserve_pb2 as pb

    replies = {"Classify": pb.ClassifyResponse, "Encode": pb.EncodeResponse, "Generate": pb.GenerateResponse}
    bodies = asyncio.run(_gather(url, payloads))
    for payload, body in zip(payloads, bodies):
        rpc = payload.method.rsplit("/", 1)[1]
        response = replies[rpc].FromString(body)
        items = response.images if rpc == "Generate" else response.results
        if len(items) != payload.rows:
            raise CheckFailed(f"{rpc}: {len(items)} results for {payload.rows} items")
    return {"requests": len(payloads), "ok": True}
