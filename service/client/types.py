"""Typed results of the attnserve API (plain dataclasses, numpy arrays; no protobuf)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from service.client.connection import ClientError
from service.proto.attnserve.v1 import attnserve_pb2 as pb

T = TypeVar("T")


@dataclass(frozen=True)
class Label:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class WindowAttention:
    """Where one query looks in a local self-attention layer."""

    pixel: tuple[int, int]  # (y, x) on the model input
    cell: tuple[int, int]  # (row, column) on the layer's grid
    grid: tuple[int, int]  # the layer's grid (rows, columns) over the model input
    weights: np.ndarray  # [heads, window, window], centred on the cell; each head sums to 1


@dataclass(frozen=True)
class Classification:
    labels: list[Label]  # most probable first
    channel_weights: np.ndarray | None = None  # SE weights of every stage, concatenated
    stage_sizes: tuple[int, ...] = ()  # how channel_weights splits by stage, when known
    spatial_attention: list[np.ndarray] = field(default_factory=list)  # [H_i, W_i] per stage (CBAM)
    theta: np.ndarray | None = None  # [2, 3] affine of a spatial transformer
    rectified_png: bytes | None = None  # the crop the spatial transformer chose
    attention: list[WindowAttention] = field(default_factory=list)  # local-attention windows asked for

    @property
    def top(self) -> Label:
        return self.labels[0]

    def stages(self) -> list[np.ndarray]:
        """channel_weights split per stage (one array when the sizes are unknown)."""
        if self.channel_weights is None:
            return []
        if not self.stage_sizes:
            return [self.channel_weights]
        return np.split(self.channel_weights, np.cumsum(self.stage_sizes)[:-1])


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: str
    items: list[Classification]  # one per image, in request order


@dataclass(frozen=True)
class AttentionGrid:
    image_height: int
    image_width: int
    query_height: int
    query_width: int
    key_height: int
    key_width: int

    def cell(self, y: int, x: int) -> int:
        """Row-major index of the query cell that pixel (y, x) falls in."""
        row = y * self.query_height // self.image_height
        return row * self.query_width + x * self.query_width // self.image_width


@dataclass(frozen=True)
class AttentionMap:
    pixel: tuple[int, int]  # (y, x) in image pixels
    query_index: int  # row-major cell of the query grid
    weights: np.ndarray  # [key_height, key_width], sums to 1


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes
    class_id: int
    class_label: str
    seed: int  # regenerate this image alone with this seed and count 1
    attention: list[AttentionMap] = field(default_factory=list)

    def pixels(self) -> np.ndarray:
        """uint8 [H, W] (greyscale) or [H, W, 3]."""
        from PIL import Image

        with Image.open(io.BytesIO(self.png)) as image:
            return np.asarray(image)


@dataclass(frozen=True)
class Generation:
    model: str
    version: str
    seed: int
    images: list[GeneratedImage]
    grid: AttentionGrid | None = None  # set when attention maps were asked for


@dataclass(frozen=True)
class Encoding:
    ids: np.ndarray  # int64 [T]: what the model saw
    tokens: list[str]  # a readable piece per id (empty when the model has no tokenizer)
    truncated: bool
    embedding: np.ndarray  # float32 [D]
    logits: np.ndarray  # float32 [K]
    labels: list[Label]  # top-k of softmax(logits)
    attention: np.ndarray | None = None  # float32 [heads, queries, keys]: T x T, 1 x T (pooling), Tq x Ts (pair)
    source_ids: np.ndarray | None = None  # pair models: the source as the model saw it
    source_tokens: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EncodeResult:
    model: str
    version: str
    items: list[Encoding]


@dataclass(frozen=True)
class StreamReply(Generic[T]):
    """One answer of a stream: ``index`` is the request's position in what was sent."""

    index: int
    result: T | None
    error: ClientError | None


# -- from protobuf --------------------------------------------------------------------------
def _labels(labels: object) -> list[Label]:
    return [Label(int(x.index), x.label, float(x.probability)) for x in labels]  # type: ignore[attr-defined]


def classify_result(reply: pb.ClassifyResponse) -> ClassifyResult:
    items = []
    for r in reply.results:
        weights = np.asarray(r.channel_weights.weights, np.float32) if r.HasField("channel_weights") else None
        maps = [np.asarray(m.weights, np.float32).reshape(m.height, m.width) for m in r.spatial_attention]
        theta = np.asarray(r.transform.theta, np.float32).reshape(2, 3) if r.HasField("transform") else None
        windows = [
            WindowAttention((w.pixel.y, w.pixel.x), (w.cell.y, w.cell.x), (w.grid_height, w.grid_width),
                            np.asarray(w.weights, np.float32).reshape(w.heads, w.window, w.window))
            for w in r.attention
        ]
        items.append(Classification(
            _labels(r.labels), weights, tuple(r.channel_weights.stage_sizes), maps, theta,
            r.transform.rectified_png if r.HasField("transform") else None, windows,
        ))
    return ClassifyResult(reply.model, reply.version, items)


def generation(reply: pb.GenerateResponse) -> Generation:
    grid = None
    shape: tuple[int, ...] = (-1,)
    if reply.HasField("attention_grid"):
        g = reply.attention_grid
        grid = AttentionGrid(g.image_height, g.image_width, g.query_height, g.query_width, g.key_height, g.key_width)
        shape = (g.key_height, g.key_width)
    images = [
        GeneratedImage(
            png=i.png, class_id=int(i.class_id), class_label=i.class_label, seed=int(i.seed),
            attention=[
                AttentionMap((a.pixel.y, a.pixel.x), a.query_index, np.asarray(a.weights, np.float32).reshape(shape))
                for a in i.attention
            ],
        )
        for i in reply.images
    ]
    return Generation(reply.model, reply.version, int(reply.seed), images, grid)


def encode_result(reply: pb.EncodeResponse) -> EncodeResult:
    items = []
    for r in reply.results:
        attention = None
        if r.HasField("attention"):
            a = r.attention
            queries = a.queries or a.length  # 0: a server from before the field (self-attention)
            attention = np.asarray(a.weights, np.float32).reshape(a.heads, queries, a.length)
        items.append(Encoding(
            ids=np.asarray(r.ids, np.int64), tokens=list(r.tokens), truncated=r.truncated,
            embedding=np.asarray(r.embedding, np.float32), logits=np.asarray(r.logits, np.float32),
            labels=_labels(r.labels), attention=attention,
            source_ids=np.asarray(r.source_ids, np.int64) if r.source_ids else None,
            source_tokens=list(r.source_tokens),
        ))
    return EncodeResult(reply.model, reply.version, items)
