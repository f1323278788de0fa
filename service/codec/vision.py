"""Classify's optional attention outputs <-> reply fields (CBAM maps, STN crop, SASA windows).

No I/O and no model state. Which extras a model can give is read from its outputs alone:

- ``spatial_attention_<i>`` [H_i, W_i], one per stage (cbam_classifier) -> ``SpatialMap``s;
- ``theta`` [2, 3] and ``rectified_image`` [C, H, W] in the model's normalised input space
  (stn_classifier) -> ``Transform`` with the crop back in [0, 1] pixels as PNG;
- ``window_attention`` [heads, H, W, k, k] (sasa_classifier: every query cell's k x k window
  of one local self-attention layer) -> the ``WindowAttention`` of the pixels asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from service.codec.images import Preprocess, encode_png
from service.errors import InvalidInput
from service.model_config import ModelSpec
from service.proto.attnserve.v1 import attnserve_pb2 as pb

SPATIAL = re.compile(r"spatial_attention_(\d+)")
WINDOW = "window_attention"


@dataclass(frozen=True)
class WindowQuery:
    pixel: tuple[int, int]  # (y, x) on the model input
    cell: tuple[int, int]  # (row, column) on the layer's grid


@dataclass(frozen=True)
class VisionExtras:
    """What a Classify call asked for beyond labels, checked against the model."""

    spatial: tuple[str, ...] = ()  # spatial_attention_<i> output names, in stage order
    transform: bool = False
    windows: tuple[WindowQuery, ...] = ()


def plan_extras(request: pb.ClassifyRequest, spec: ModelSpec, pre: Preprocess) -> VisionExtras:
    spatial: tuple[str, ...] = ()
    if request.spatial_attention:
        stages = sorted((int(m.group(1)), t.name) for t in spec.outputs if (m := SPATIAL.fullmatch(t.name)))
        if not stages:
            raise InvalidInput(f"model {spec.name!r} has no spatial attention outputs (spatial_attention_<i>)")
        spatial = tuple(name for _, name in stages)
    if request.transform and (spec.output("theta") is None or spec.output("rectified_image") is None):
        raise InvalidInput(f"model {spec.name!r} has no theta and rectified_image outputs")
    windows: tuple[WindowQuery, ...] = ()
    if request.HasField("attention"):
        windows = _window_queries(request.attention, spec, pre)
    return VisionExtras(spatial, request.transform, windows)


def _window_queries(asked: pb.AttentionRequest, spec: ModelSpec, pre: Preprocess) -> tuple[WindowQuery, ...]:
    out = spec.output(WINDOW)
    if out is None or len(out.dims) != 5 or min(out.dims) < 1:
        raise InvalidInput(f"model {spec.name!r} has no {WINDOW} output")
    _, rows, cols, _, _ = out.dims
    if asked.all_queries:
        return tuple(
            WindowQuery((r * pre.height // rows, c * pre.width // cols), (r, c)) for r in range(rows) for c in range(cols)
        )
    if not asked.queries:
        raise InvalidInput("attention: give query pixels or set all_queries")
    if len(asked.queries) > rows * cols:
        raise InvalidInput(f"attention: {len(asked.queries)} queries; at most one per cell ({rows * cols}) or all_queries")
    queries = []
    for i, point in enumerate(asked.queries):
        if point.y >= pre.height or point.x >= pre.width:
            raise InvalidInput(
                f"attention.queries[{i}] ({point.y}, {point.x}) is outside the {pre.height}x{pre.width} model input"
            )
        queries.append(WindowQuery((point.y, point.x), (point.y * rows // pre.height, point.x * cols // pre.width)))
    return tuple(queries)


def add_extras(
    result: pb.Classification, outputs: dict[str, np.ndarray], row: int, extras: VisionExtras, pre: Preprocess
) -> None:
    """Fill ``result`` (image ``row`` of the batch) with what ``extras`` asked for."""
    for name in extras.spatial:
        plane = outputs[name][row]
        result.spatial_attention.add(height=plane.shape[0], width=plane.shape[1], weights=plane.ravel().tolist())
    if extras.transform:
        result.transform.theta.extend(outputs["theta"][row].ravel().tolist())
        result.transform.rectified_png = encode_png(to_signed_unit(outputs["rectified_image"][row], pre))
    if extras.windows:
        weights = outputs[WINDOW][row]  # [heads, H, W, k, k]
        heads, rows, cols, window, _ = weights.shape
        for q in extras.windows:
            result.attention.add(
                pixel=pb.Point(y=q.pixel[0], x=q.pixel[1]), cell=pb.Point(y=q.cell[0], x=q.cell[1]),
                grid_height=rows, grid_width=cols, heads=heads, window=window,
                weights=weights[:, q.cell[0], q.cell[1]].ravel().tolist(),
            )


def to_signed_unit(image: np.ndarray, pre: Preprocess) -> np.ndarray:
    """A normalised [C, H, W] model-input image -> [-1, 1] (what encode_png takes), undoing
    ``(x - mean) / std``; values outside [0, 1] pixels are clipped."""
    mean = np.asarray(pre.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(-1, 1, 1)
    return np.clip(image * std + mean, 0.0, 1.0) * 2.0 - 1.0
