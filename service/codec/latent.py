"""attnserve Generate messages <-> generator tensors: seeded latents, classes, attention maps.

No I/O and no model state. Reproducibility is the contract: image ``i`` of a request with
seed ``S`` is generated from ``z = numpy.random.default_rng(S + i).standard_normal(z_dim)``
(float64, cast to float32), so the same seed gives the same image on any server, and one
image of a grid can be regenerated alone with seed ``S + i``. With a truncation threshold
``t``, entries with ``|z| > t`` are redrawn from the same generator (at most
``MAX_REDRAWS`` rounds; anything left is clipped to +-t), which keeps it deterministic.

The generator's ``attention`` output is [B, queries, pooled keys]: softmax weights of each
feature-map position over the 2x2 max-pooled positions (export/models/sagan_generator.py).
Both grids cover the whole image with its aspect ratio, so their sides follow from the
counts (16x16 queries and 8x8 keys for the default 32x32 model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from service.codec.api import ApiLimits, ModelAssets, check_count
from service.codec.images import encode_png
from service.errors import InvalidInput
from service.model_config import ModelSpec
from service.proto.attnserve.v1 import attnserve_pb2 as pb

MAX_REDRAWS = 32
MIN_TRUNCATION = 1e-3  # below this almost every entry would be clipped to ~0
UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class AttentionGrid:
    image_height: int
    image_width: int
    query_height: int
    query_width: int
    key_height: int
    key_width: int

    @classmethod
    def of(cls, image_hw: tuple[int, int], queries: int, keys: int) -> "AttentionGrid | None":
        """The query and key grids over an image, or None when the counts are not grids of it."""
        height, width = image_hw
        sides = [_grid(count, height, width) for count in (queries, keys)]
        if sides[0] is None or sides[1] is None:
            return None
        return cls(height, width, *sides[0], *sides[1])

    def cell(self, y: int, x: int) -> int:
        """Row-major query index of the cell that pixel (y, x) falls in."""
        return (y * self.query_height // self.image_height) * self.query_width + x * self.query_width // self.image_width

    def cell_origin(self, index: int) -> tuple[int, int]:
        """The top-left pixel of query cell ``index``."""
        row, col = divmod(index, self.query_width)
        return row * self.image_height // self.query_height, col * self.image_width // self.query_width

    def to_proto(self) -> pb.AttentionGrid:
        return pb.AttentionGrid(**self.__dict__)


def _grid(count: int, height: int, width: int) -> tuple[int, int] | None:
    rows = math.isqrt(count * height // width) if count * height % width == 0 else 0
    if rows and count % rows == 0 and rows * width == (count // rows) * height:
        return rows, count // rows
    return None


@dataclass(frozen=True)
class GeneratePlan:
    count: int
    seed: int
    truncation: float
    z_dim: int
    classes: np.ndarray  # int64 [count, 1]
    grid: AttentionGrid | None  # set when attention maps were asked for
    queries: tuple[tuple[int, int, int], ...]  # (y, x, query index); all cells for all_queries


def plan_generate(
    request: pb.GenerateRequest, spec: ModelSpec, assets: ModelAssets, limits: ApiLimits,
    draw_seed: Callable[[], int],
) -> GeneratePlan:
    z, label, image = spec.input("z"), spec.input("class_label"), spec.output("image")
    if z is None or label is None or image is None or len(z.dims) != 1 or len(image.dims) != 3:
        raise InvalidInput(f"model {spec.name!r} is not a class-conditional generator (z, class_label -> image)")
    count = request.count if request.HasField("count") else 1
    check_count(count, limits, "images")
    seed = request.seed if request.HasField("seed") else draw_seed()
    if seed + count - 1 > UINT64_MAX:
        raise InvalidInput(f"seed {seed} + count {count} overflows uint64 (image i uses seed + i)")
    truncation = float(request.truncation)
    if not (truncation == 0 or MIN_TRUNCATION <= truncation < math.inf):
        raise InvalidInput(f"truncation {truncation} must be 0 (off) or a threshold >= {MIN_TRUNCATION}")
    grid, queries = None, ()
    if request.HasField("attention"):
        grid, queries = _attention_plan(request.attention, spec, image.dims[1:])
    return GeneratePlan(count, seed, truncation, z.dims[0], _classes(request, count, spec, assets), grid, queries)


def _classes(request: pb.GenerateRequest, count: int, spec: ModelSpec, assets: ModelAssets) -> np.ndarray:
    if request.class_ids and request.class_labels:
        raise InvalidInput("give class_ids or class_labels, not both")
    counts = [len(assets.labels)] if assets.labels is not None else []
    label = spec.input("class_label")
    largest = None if label is None else label.max_value  # from attnserve.input_limits, if any
    if largest is not None:
        counts.append(int(largest) + 1)
    known = min(counts) if counts else None
    if request.class_labels:
        index = {name: i for i, name in enumerate(assets.labels or ())}
        unknown = [name for name in request.class_labels if name not in index]
        if unknown:
            raise InvalidInput(f"unknown class labels {unknown[:5]}; this model has {list(index)[:20]}")
        ids = [index[name] for name in request.class_labels]
    else:
        ids = list(request.class_ids) or [0]
    bad = [i for i in ids if i < 0 or (known is not None and i >= known)]
    if bad:
        raise InvalidInput(f"class ids {bad[:5]} out of range; this model has classes 0..{(known or 1) - 1}")
    if len(ids) not in (1, count):
        raise InvalidInput(f"{len(ids)} classes for {count} images; give one class or one per image")
    return np.asarray(ids * count if len(ids) == 1 else ids, np.int64).reshape(count, 1)


def _attention_plan(
    asked: pb.AttentionRequest, spec: ModelSpec, image_hw: tuple[int, ...]
) -> tuple[AttentionGrid, tuple[tuple[int, int, int], ...]]:
    out = spec.output("attention")
    if out is None or len(out.dims) != 2 or min(out.dims) < 1:
        raise InvalidInput(f"model {spec.name!r} has no attention output")
    grid = AttentionGrid.of((image_hw[0], image_hw[1]), out.dims[0], out.dims[1])
    if grid is None:
        raise InvalidInput(f"model {spec.name!r}: attention {list(out.dims)} is not a grid over its image")
    if asked.all_queries:
        cells = range(grid.query_height * grid.query_width)
        return grid, tuple((*grid.cell_origin(i), i) for i in cells)
    if not asked.queries:
        raise InvalidInput("attention: give query pixels or set all_queries")
    if len(asked.queries) > grid.query_height * grid.query_width:
        raise InvalidInput(f"attention: {len(asked.queries)} queries; at most one per cell "
                           f"({grid.query_height * grid.query_width}) or all_queries")
    queries = []
    for i, point in enumerate(asked.queries):
        if point.y >= grid.image_height or point.x >= grid.image_width:
            raise InvalidInput(f"attention.queries[{i}] ({point.y}, {point.x}) is outside the "
                               f"{grid.image_height}x{grid.image_width} image")
        queries.append((point.y, point.x, grid.cell(point.y, point.x)))
    return grid, tuple(queries)


def latents(seed: int, count: int, z_dim: int, truncation: float = 0.0) -> np.ndarray:
    """float32 [count, z_dim]; row i from default_rng(seed + i) (see the module docstring)."""
    z = np.empty((count, z_dim), np.float32)
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        row = rng.standard_normal(z_dim)
        if truncation > 0:
            for _ in range(MAX_REDRAWS):
                outside = np.abs(row) > truncation
                if not outside.any():
                    break
                row[outside] = rng.standard_normal(int(outside.sum()))
            row = np.clip(row, -truncation, truncation)
        z[i] = row
    return z


def generator_inputs(plan: GeneratePlan) -> dict[str, np.ndarray]:
    return {"z": latents(plan.seed, plan.count, plan.z_dim, plan.truncation), "class_label": plan.classes}


def generate_response(
    model: str, version: str, plan: GeneratePlan, outputs: Mapping[str, np.ndarray], assets: ModelAssets
) -> pb.GenerateResponse:
    """PNG-encode every image (CPU work: the transport runs this off the event loop)."""
    response = pb.GenerateResponse(model=model, version=version, seed=plan.seed)
    if plan.grid is not None:
        response.attention_grid.CopyFrom(plan.grid.to_proto())
    for i, image in enumerate(outputs["image"]):
        class_id = int(plan.classes[i, 0])
        item = response.images.add(
            png=encode_png(image), class_id=class_id, class_label=assets.label(class_id), seed=plan.seed + i
        )
        for y, x, query in plan.queries:
            item.attention.add(pixel=pb.Point(y=y, x=x), query_index=query,
                               weights=outputs["attention"][i, query].tolist())
    return response
