"""attnserve API messages <-> model tensors for Classify and Encode (Generate: codec.latent).

No I/O and no model state: each RPC has a ``plan_*`` function that checks a request against
the model's spec and side files (:class:`ModelAssets`, read by the transport) and says what to
run, and a ``*_response`` function that turns the model's outputs into the reply. Messages say
which item of the request is wrong (``images[2]``, ``sequences[0]``) because that is what a
client needs to fix the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from service.codec.images import ImageLimits, Preprocess
from service.codec.tokens import ByteTokenizer, SequenceLimits, check_ids
from service.codec.vision import VisionExtras, add_extras, plan_extras
from service.errors import InvalidInput, ModelLoadError
from service.model_config import ModelSpec
from service.proto.attnserve.v1 import attnserve_pb2 as pb

DEFAULT_CLASSIFIER = "se_cnn_classifier"
DEFAULT_GENERATOR = "sagan_generator"
DEFAULT_ENCODER = "transformer_encoder"
DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class ApiLimits:
    images: ImageLimits
    max_items: int  # images per Classify, sequences per Encode, count per Generate
    max_tokens: int  # longest sequence when the model declares no maximum of its own


@dataclass(frozen=True)
class ModelAssets:
    """A model's side files and attnserve parameters, parsed (None: the model has none)."""

    labels: tuple[str, ...] | None = None
    preprocess: Preprocess | None = None
    tokenizer: ByteTokenizer | None = None
    channel_stages: tuple[int, ...] | None = None

    def label(self, index: int) -> str:
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)


# -- shared ----------------------------------------------------------------------------------
def check_count(count: int, limits: ApiLimits, what: str) -> None:
    if count == 0:
        raise InvalidInput(f"no {what}: send at least one")
    if count > limits.max_items:
        raise InvalidInput(f"{count} {what} in one request, above the limit of {limits.max_items}")


def effective_top_k(requested: int, classes: int) -> int:
    return min(requested or DEFAULT_TOP_K, classes)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted.astype(np.float64))
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def top_labels(probabilities: np.ndarray, k: int, assets: ModelAssets) -> list[pb.Label]:
    """The k most probable classes of one row, most probable first (ties: lower index first)."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [pb.Label(index=int(i), label=assets.label(int(i)), probability=float(probabilities[i])) for i in order]


def split_rows(arrays: Mapping[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    """Cut a request of N rows into requests of at most ``size`` rows (max_batch_size)."""
    rows = len(next(iter(arrays.values())))
    return [{name: a[start:start + size] for name, a in arrays.items()} for start in range(0, rows, size)]


def join_rows(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _output_dims(spec: ModelSpec, name: str) -> tuple[int, ...] | None:
    tensor = spec.output(name)
    return None if tensor is None else tensor.dims


# -- Classify --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassifyPlan:
    input: str
    preprocess: Preprocess
    top_k: int
    channel_weights: bool
    extras: VisionExtras = VisionExtras()


def plan_classify(request: pb.ClassifyRequest, spec: ModelSpec, assets: ModelAssets, limits: ApiLimits) -> ClassifyPlan:
    pre = assets.preprocess
    if pre is None:
        raise InvalidInput(f"model {spec.name!r} does not take images (its config has no attnserve.preprocess)")
    if len(spec.inputs) != 1:
        raise InvalidInput(f"model {spec.name!r} has {len(spec.inputs)} inputs; Classify needs a one-input image model")
    image = spec.inputs[0]
    want = (pre.channels, pre.height, pre.width)
    if image.dims != want or image.datatype != "FP32":
        raise ModelLoadError(
            f"model {spec.name!r}: attnserve.preprocess makes FP32 {list(want)} but input {image.name!r} "
            f"is {image.datatype} {list(image.dims)}; fix its config.pbtxt"
        )
    scores = _output_dims(spec, "probabilities") or _output_dims(spec, "logits")
    if scores is None or len(scores) != 1:
        raise InvalidInput(f"model {spec.name!r} has no 'probabilities' or 'logits' output to classify with")
    if request.channel_weights and spec.output("channel_weights") is None:
        raise InvalidInput(f"model {spec.name!r} has no channel_weights output")
    extras = plan_extras(request, spec, pre)
    check_count(len(request.images), limits, "images")
    return ClassifyPlan(image.name, pre, effective_top_k(request.top_k, scores[0]), request.channel_weights, extras)


def classify_response(
    request: pb.ClassifyRequest, model: str, version: str, outputs: Mapping[str, np.ndarray],
    plan: ClassifyPlan, assets: ModelAssets,
) -> pb.ClassifyResponse:
    probabilities = outputs["probabilities"] if "probabilities" in outputs else softmax(outputs["logits"])
    response = pb.ClassifyResponse(model=model, version=version, id=request.id)
    stages = assets.channel_stages or ()
    for row, probs in enumerate(probabilities):
        result = response.results.add(labels=top_labels(probs, plan.top_k, assets))
        if plan.channel_weights:
            weights = outputs["channel_weights"][row]
            result.channel_weights.weights.extend(weights.tolist())
            if sum(stages) == weights.size:
                result.channel_weights.stage_sizes.extend(stages)
        add_extras(result, outputs, row, plan.extras, plan.preprocess)
    return response


# -- Encode ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodePlan:
    limits: SequenceLimits
    top_k: int
    attention: bool
    tokenizer: ByteTokenizer | None
    pair: bool = False  # query_ids + source_ids: sources[i] goes with sequences[i]
    attention_output: str = "attention"


@dataclass(frozen=True)
class Tokens:
    ids: np.ndarray  # int64 [T]
    truncated: bool


ENCODER_INPUTS = ("input_ids", "attention_mask")
PAIR_INPUTS = ("query_ids", "source_ids")  # ids only: the graph masks id 0 (padding) itself


def _has_inputs(spec: ModelSpec, names: tuple[str, ...]) -> bool:
    return tuple(t.name for t in spec.inputs) == names and all(spec.input(n).dims == (-1,) for n in names)


def plan_encode(request: pb.EncodeRequest, spec: ModelSpec, assets: ModelAssets, limits: ApiLimits) -> EncodePlan:
    pair = _has_inputs(spec, PAIR_INPUTS)
    if not pair and not _has_inputs(spec, ENCODER_INPUTS):
        raise InvalidInput(
            f"model {spec.name!r} is not a sequence encoder (inputs input_ids, attention_mask [-1]) "
            "or a pair model (inputs query_ids, source_ids [-1])"
        )
    logits = _output_dims(spec, "logits")
    if logits is None or (not pair and spec.output("embedding") is None):
        raise InvalidInput(f"model {spec.name!r} has no embedding and logits outputs")
    attention_output = "cross_attention" if pair else "attention"
    if request.attention:
        dims = _output_dims(spec, attention_output)
        if dims is None:
            raise InvalidInput(f"model {spec.name!r} has no {attention_output} output")
        if len(dims) != 3:  # [heads, queries, tokens] after the batch dim
            raise InvalidInput(f"model {spec.name!r}: {attention_output} output {list(dims)} is not [heads, queries, tokens]")
    check_count(len(request.sequences), limits, "sequences")
    if pair and len(request.sources) != len(request.sequences):
        raise InvalidInput(
            f"model {spec.name!r} reads pairs: send one source per sequence "
            f"(got {len(request.sequences)} sequences, {len(request.sources)} sources)"
        )
    if not pair and request.sources:
        raise InvalidInput(f"model {spec.name!r} takes one sequence per item; sources are for pair models")
    first = PAIR_INPUTS[0] if pair else "input_ids"
    return EncodePlan(_sequence_limits(spec, assets, limits, first), effective_top_k(request.top_k, logits[0]),
                      request.attention, assets.tokenizer, pair, attention_output)


def _sequence_limits(spec: ModelSpec, assets: ModelAssets, limits: ApiLimits, input_name: str = "input_ids") -> SequenceLimits:
    """The longest sequence and the vocabulary, from every place the model declares them."""
    ids = spec.input(input_name)
    assert ids is not None  # plan_encode checked the inputs
    lengths = [limits.max_tokens]
    vocab = []
    if assets.tokenizer is not None:
        lengths.append(assets.tokenizer.max_length)
        vocab.append(assets.tokenizer.vocab_size)
    # attnserve.input_limits (service/model_config.py), when the config carries it.
    if ids.max_dims:
        lengths.append(int(ids.max_dims[0]))
    if ids.max_value is not None:
        vocab.append(int(ids.max_value) + 1)
    lowest = max(0, int(ids.min_value)) if ids.min_value is not None else 0
    return SequenceLimits(min(lengths), min(vocab) if vocab else None, lowest)


def tokens_of(request: pb.EncodeRequest, plan: EncodePlan, field: str = "sequences") -> list[Tokens]:
    """Every sequence (or source) of the request as checked ids; InvalidInput names
    ``sequences[i]`` (``sources[i]``)."""
    out = []
    for index, sequence in enumerate(getattr(request, field)):
        where = f"{field}[{index}]"
        kind = sequence.WhichOneof("input")
        if kind == "text":
            if plan.tokenizer is None:
                raise InvalidInput(f"{where}: this model has no tokenizer; send token ids")
            ids, truncated = plan.tokenizer.encode(sequence.text, plan.limits.max_length)
            out.append(Tokens(check_ids(ids, plan.limits, where), truncated))
        elif kind == "ids":
            out.append(Tokens(check_ids(sequence.ids.ids, plan.limits, where), False))
        else:
            raise InvalidInput(f"{where}: set ids or text")
    return out


def encoder_inputs(tokens: Tokens) -> dict[str, np.ndarray]:
    """One sequence as a one-row request; the batcher pads it among others and cuts it back."""
    ids = tokens.ids[None, :]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def pair_inputs(query: Tokens, source: Tokens) -> dict[str, np.ndarray]:
    """One (query, source) pair as a one-row request; the batcher pads each on its own."""
    return {"query_ids": query.ids[None, :], "source_ids": source.ids[None, :]}


def encode_response(
    request: pb.EncodeRequest, model: str, version: str, tokens: Sequence[Tokens],
    outputs: Sequence[Mapping[str, np.ndarray]], plan: EncodePlan, assets: ModelAssets,
    sources: Sequence[Tokens] = (),
) -> pb.EncodeResponse:
    response = pb.EncodeResponse(model=model, version=version, id=request.id)
    for index, (item, out) in enumerate(zip(tokens, outputs, strict=True)):
        logits = out["logits"][0]
        result = response.results.add(
            ids=item.ids.tolist(),
            truncated=item.truncated,
            logits=logits.tolist(),
            labels=top_labels(softmax(logits), plan.top_k, assets),
        )
        if "embedding" in out:
            result.embedding.extend(out["embedding"][0].tolist())
        if plan.tokenizer is not None:
            result.tokens.extend(plan.tokenizer.token_text(int(t)) for t in item.ids)
        if plan.pair:
            source = sources[index]
            result.source_ids.extend(source.ids.tolist())
            result.source_truncated = source.truncated
            if plan.tokenizer is not None:
                result.source_tokens.extend(plan.tokenizer.token_text(int(t)) for t in source.ids)
        if plan.attention:
            # [heads, queries, keys], cut to this sequence: queries T (self-attention), 1
            # (attention pooling's learned query) or the query's length over the source's
            # (cross-attention).
            weights = out[plan.attention_output][0]
            heads, queries, length = weights.shape
            result.attention.heads, result.attention.length = heads, length
            result.attention.queries = queries
            result.attention.weights.extend(weights.ravel().tolist())
    return response
