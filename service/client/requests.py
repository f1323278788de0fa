"""Python values -> request messages, shared by the sync and asyncio clients.

Images may be given as encoded bytes (sent as they are), a path (the file's bytes are sent,
so the server decodes exactly what is on disk), a PIL image or a uint8 array (PNG-encoded
here, losslessly). Sequences are text (tokenised by the server) or token ids.
"""

from __future__ import annotations

import io
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np

from service.dtypes import NUMPY_TO_V2, V2_TO_NUMPY
from service.proto.attnserve.v1 import attnserve_pb2 as pb
from service.proto.inference import grpc_service_pb2 as v2

ImageLike = Union[bytes, str, PathLike, np.ndarray, Any]  # Any: a PIL.Image.Image
SequenceLike = Union[str, Sequence[int], np.ndarray]
Attention = Union[None, str, Iterable[tuple[int, int]]]  # None, "all", or (y, x) pixels


def encoded_image(image: ImageLike) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, PathLike)):
        return Path(image).read_bytes()
    from PIL import Image  # only needed for arrays and PIL images

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError("image arrays must be uint8 [H, W] or [H, W, C]")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"cannot send {type(image).__name__} as an image")


def classify_request(
    images: Iterable[ImageLike], *, model: str = "", version: str = "", top_k: int = 0,
    channel_weights: bool = False, request_id: str = "", spatial_attention: bool = False,
    transform: bool = False, attention: Attention = None,
) -> pb.ClassifyRequest:
    """``attention``: pixels (y, x) of the model input whose local-attention windows to return."""
    request = pb.ClassifyRequest(
        model=model, version=version, images=[encoded_image(i) for i in images],
        top_k=top_k, channel_weights=channel_weights, id=request_id,
        spatial_attention=spatial_attention, transform=transform,
    )
    _attention(request.attention, attention)
    return request


def _attention(message: pb.AttentionRequest, attention: Attention) -> None:
    """Fill ``message`` (setting the field) unless ``attention`` is None."""
    if attention == "all":
        message.all_queries = True
    elif attention is not None:
        message.queries.extend(pb.Point(y=int(y), x=int(x)) for y, x in attention)  # type: ignore[union-attr]


def sequence(item: SequenceLike) -> pb.Sequence:
    if isinstance(item, str):
        return pb.Sequence(text=item)
    return pb.Sequence(ids=pb.TokenIds(ids=[int(t) for t in np.asarray(item).ravel()]))


def encode_request(
    sequences: Iterable[SequenceLike], *, model: str = "", version: str = "", top_k: int = 0,
    attention: bool = False, request_id: str = "", sources: Iterable[SequenceLike] = (),
) -> pb.EncodeRequest:
    """``sources``: for a pair model, one source sequence per sequence (read by it)."""
    return pb.EncodeRequest(
        model=model, version=version, sequences=[sequence(s) for s in sequences],
        top_k=top_k, attention=attention, id=request_id, sources=[sequence(s) for s in sources],
    )


def generate_request(
    count: int = 1, *, classes: int | str | Sequence[int | str] | None = None, seed: int | None = None,
    truncation: float = 0.0, attention: Attention = None, model: str = "", version: str = "",
) -> pb.GenerateRequest:
    """``classes``: one class (index or label) for every image, or one per image."""
    request = pb.GenerateRequest(model=model, version=version, count=count, truncation=truncation)
    if seed is not None:
        request.seed = seed
    wanted = [] if classes is None else [classes] if isinstance(classes, (int, str)) else list(classes)
    if all(isinstance(c, (int, np.integer)) for c in wanted):
        request.class_ids.extend(int(c) for c in wanted)
    elif all(isinstance(c, str) for c in wanted):
        request.class_labels.extend(str(c) for c in wanted)
    else:
        raise TypeError("give classes as all indices or all labels")
    _attention(request.attention, attention)
    return request


# -- the v2 surface -------------------------------------------------------------------------
def infer_request(
    model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] = (), version: str = ""
) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model, model_version=version)
    for name, array in inputs.items():
        array = np.ascontiguousarray(array)
        request.inputs.add(name=name, datatype=NUMPY_TO_V2[array.dtype], shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    request.outputs.extend(v2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs)
    return request


def infer_outputs(reply: v2.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        out.name: np.frombuffer(raw, dtype=V2_TO_NUMPY[out.datatype]).reshape(tuple(out.shape))
        for out, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)
    }
