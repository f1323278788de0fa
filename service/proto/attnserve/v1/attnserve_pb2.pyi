from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Label(_message.Message):
    __slots__ = ("index", "label", "probability")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    probability: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "version", "images", "top_k", "channel_weights", "id", "spatial_attention", "transform", "attention")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SPATIAL_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    top_k: int
    channel_weights: bool
    id: str
    spatial_attention: bool
    transform: bool
    attention: AttentionRequest
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., top_k: _Optional[int] = ..., channel_weights: _Optional[bool] = ..., id: _Optional[str] = ..., spatial_attention: _Optional[bool] = ..., transform: _Optional[bool] = ..., attention: _Optional[_Union[AttentionRequest, _Mapping]] = ...) -> None: ...

class ChannelWeights(_message.Message):
    __slots__ = ("weights", "stage_sizes")
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    STAGE_SIZES_FIELD_NUMBER: _ClassVar[int]
    weights: _containers.RepeatedScalarFieldContainer[float]
    stage_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, weights: _Optional[_Iterable[float]] = ..., stage_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class SpatialMap(_message.Message):
    __slots__ = ("height", "width", "weights")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., weights: _Optional[_Iterable[float]] = ...) -> None: ...

class Transform(_message.Message):
    __slots__ = ("theta", "rectified_png")
    THETA_FIELD_NUMBER: _ClassVar[int]
    RECTIFIED_PNG_FIELD_NUMBER: _ClassVar[int]
    theta: _containers.RepeatedScalarFieldContainer[float]
    rectified_png: bytes
    def __init__(self, theta: _Optional[_Iterable[float]] = ..., rectified_png: _Optional[bytes] = ...) -> None: ...

class WindowAttention(_message.Message):
    __slots__ = ("pixel", "cell", "grid_height", "grid_width", "heads", "window", "weights")
    PIXEL_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    GRID_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    GRID_WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    pixel: Point
    cell: Point
    grid_height: int
    grid_width: int
    heads: int
    window: int
    weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, pixel: _Optional[_Union[Point, _Mapping]] = ..., cell: _Optional[_Union[Point, _Mapping]] = ..., grid_height: _Optional[int] = ..., grid_width: _Optional[int] = ..., heads: _Optional[int] = ..., window: _Optional[int] = ..., weights: _Optional[_Iterable[float]] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("labels", "channel_weights", "spatial_attention", "transform", "attention")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SPATIAL_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    channel_weights: ChannelWeights
    spatial_attention: _containers.RepeatedCompositeFieldContainer[SpatialMap]
    transform: Transform
    attention: _containers.RepeatedCompositeFieldContainer[WindowAttention]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., channel_weights: _Optional[_Union[ChannelWeights, _Mapping]] = ..., spatial_attention: _Optional[_Iterable[_Union[SpatialMap, _Mapping]]] = ..., transform: _Optional[_Union[Transform, _Mapping]] = ..., attention: _Optional[_Iterable[_Union[WindowAttention, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "version", "id", "results")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    id: str
    results: _containers.RepeatedCompositeFieldContainer[Classification]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ...) -> None: ...

class ClassifyStreamResponse(_message.Message):
    __slots__ = ("response", "error", "id")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    response: ClassifyResponse
    error: StreamError
    id: str
    def __init__(self, response: _Optional[_Union[ClassifyResponse, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("y", "x")
    Y_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    y: int
    x: int
    def __init__(self, y: _Optional[int] = ..., x: _Optional[int] = ...) -> None: ...

class AttentionRequest(_message.Message):
    __slots__ = ("queries", "all_queries")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    ALL_QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[Point]
    all_queries: bool
    def __init__(self, queries: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., all_queries: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "version", "count", "class_ids", "class_labels", "seed", "truncation", "attention")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CLASS_IDS_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    count: int
    class_ids: _containers.RepeatedScalarFieldContainer[int]
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    truncation: float
    attention: AttentionRequest
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., count: _Optional[int] = ..., class_ids: _Optional[_Iterable[int]] = ..., class_labels: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., truncation: _Optional[float] = ..., attention: _Optional[_Union[AttentionRequest, _Mapping]] = ...) -> None: ...

class AttentionGrid(_message.Message):
    __slots__ = ("image_height", "image_width", "query_height", "query_width", "key_height", "key_width")
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    QUERY_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    QUERY_WIDTH_FIELD_NUMBER: _ClassVar[int]
    KEY_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    KEY_WIDTH_FIELD_NUMBER: _ClassVar[int]
    image_height: int
    image_width: int
    query_height: int
    query_width: int
    key_height: int
    key_width: int
    def __init__(self, image_height: _Optional[int] = ..., image_width: _Optional[int] = ..., query_height: _Optional[int] = ..., query_width: _Optional[int] = ..., key_height: _Optional[int] = ..., key_width: _Optional[int] = ...) -> None: ...

class AttentionMap(_message.Message):
    __slots__ = ("pixel", "query_index", "weights")
    PIXEL_FIELD_NUMBER: _ClassVar[int]
    QUERY_INDEX_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    pixel: Point
    query_index: int
    weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, pixel: _Optional[_Union[Point, _Mapping]] = ..., query_index: _Optional[int] = ..., weights: _Optional[_Iterable[float]] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("png", "class_id", "class_label", "seed", "attention")
    PNG_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABEL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    class_id: int
    class_label: str
    seed: int
    attention: _containers.RepeatedCompositeFieldContainer[AttentionMap]
    def __init__(self, png: _Optional[bytes] = ..., class_id: _Optional[int] = ..., class_label: _Optional[str] = ..., seed: _Optional[int] = ..., attention: _Optional[_Iterable[_Union[AttentionMap, _Mapping]]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("model", "version", "seed", "images", "attention_grid")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_GRID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    seed: int
    images: _containers.RepeatedCompositeFieldContainer[GeneratedImage]
    attention_grid: AttentionGrid
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., seed: _Optional[int] = ..., images: _Optional[_Iterable[_Union[GeneratedImage, _Mapping]]] = ..., attention_grid: _Optional[_Union[AttentionGrid, _Mapping]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Sequence(_message.Message):
    __slots__ = ("ids", "text")
    IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ids: TokenIds
    text: str
    def __init__(self, ids: _Optional[_Union[TokenIds, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("model", "version", "sequences", "top_k", "attention", "id", "sources")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    sequences: _containers.RepeatedCompositeFieldContainer[Sequence]
    top_k: int
    attention: bool
    id: str
    sources: _containers.RepeatedCompositeFieldContainer[Sequence]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., sequences: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ..., top_k: _Optional[int] = ..., attention: _Optional[bool] = ..., id: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ...) -> None: ...

class HeadAttention(_message.Message):
    __slots__ = ("heads", "length", "weights", "queries")
    HEADS_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    heads: int
    length: int
    weights: _containers.RepeatedScalarFieldContainer[float]
    queries: int
    def __init__(self, heads: _Optional[int] = ..., length: _Optional[int] = ..., weights: _Optional[_Iterable[float]] = ..., queries: _Optional[int] = ...) -> None: ...

class Encoding(_message.Message):
    __slots__ = ("ids", "truncated", "embedding", "logits", "labels", "attention", "tokens", "source_ids", "source_truncated", "source_tokens")
    IDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    truncated: bool
    embedding: _containers.RepeatedScalarFieldContainer[float]
    logits: _containers.RepeatedScalarFieldContainer[float]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    attention: HeadAttention
    tokens: _containers.RepeatedScalarFieldContainer[str]
    source_ids: _containers.RepeatedScalarFieldContainer[int]
    source_truncated: bool
    source_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., truncated: _Optional[bool] = ..., embedding: _Optional[_Iterable[float]] = ..., logits: _Optional[_Iterable[float]] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., attention: _Optional[_Union[HeadAttention, _Mapping]] = ..., tokens: _Optional[_Iterable[str]] = ..., source_ids: _Optional[_Iterable[int]] = ..., source_truncated: _Optional[bool] = ..., source_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("model", "version", "id", "results")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    id: str
    results: _containers.RepeatedCompositeFieldContainer[Encoding]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[Encoding, _Mapping]]] = ...) -> None: ...

class EncodeStreamResponse(_message.Message):
    __slots__ = ("response", "error", "id")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    response: EncodeResponse
    error: StreamError
    id: str
    def __init__(self, response: _Optional[_Union[EncodeResponse, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...
