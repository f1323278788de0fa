"""What the exporter knows about each served model, in one place.

A :class:`ModelSpec` ties a model file to its served contract: the config dataclass and its
``default``/``benchmark`` variants, the tensors of ``config.pbtxt`` (shapes from the config,
names from docs/architecture.md), random sample inputs for export, parity and batch-norm
calibration, the symbolic axes, and the side files. Defaults that other code must agree on
(max batch size, seeds) live in :mod:`export.defaults`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

from export.defaults import DEFAULT_MAX_BATCH_SIZE, MODEL_NAMES, SEEDS
from export.models import cbam_classifier as cbam
from export.models import langid_attention as family
from export.models import sagan_generator as sagan
from export.models import sasa_classifier as sasa
from export.models import se_cnn_classifier as secnn
from export.models import stn_classifier as stn
from export.models import transformer_encoder as encoder
from export.repository_writer import (
    ModelConfigSpec,
    TensorConfig,
    WarmupConfig,
    WarmupInput,
    preferred_batch_sizes,
)

LABELS_FILE = "labels.txt"
TOKENIZER_FILE = "tokenizer.json"
# The encoder's attnserve.max_padding_ratio (see service/batching/policy.py).
MAX_PADDING_RATIO = "0.25"


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _labels_text(labels: tuple[str, ...] | None, num_classes: int) -> str:
    return "\n".join(labels or tuple(str(i) for i in range(num_classes))) + "\n"


class ModelSpec(ABC):
    """The served contract of one model; subclasses fill in the model-specific parts."""

    name: ClassVar[str]
    config_type: ClassVar[type]
    variants: ClassVar[dict[str, Any]]

    @property
    def default_max_batch_size(self) -> int:
        return DEFAULT_MAX_BATCH_SIZE[self.name]

    @property
    def seed(self) -> int:
        return SEEDS[self.name]

    @abstractmethod
    def build(self, config: Any) -> nn.Module: ...

    @abstractmethod
    def inputs(self, config: Any) -> tuple[TensorConfig, ...]: ...

    @abstractmethod
    def outputs(self, config: Any) -> tuple[TensorConfig, ...]: ...

    @abstractmethod
    def sample(
        self, config: Any, batch: int, generator: torch.Generator, sequence: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Random inputs of ``batch`` rows, keyed by served input name (never all zeros;
        the encoder's last row is deliberately all padding when ``batch >= 3``)."""

    def dynamic_axes(self, config: Any) -> dict[str, dict[int, Dim]]:
        batch = Dim("batch")
        return {t.name: {0: batch} for t in self.inputs(config)}

    def parity_sequences(self, config: Any) -> tuple[int | None, ...]:
        return (None,)  # fixed-shape models: one case per batch size

    def export_sequence(self, config: Any) -> int | None:
        return None

    def warmup_sequence(self, config: Any) -> int | None:
        """Length that replaces -1 dims in warm-up requests (Triton needs fixed dims)."""
        return None

    def side_files(self, config: Any) -> dict[str, str]:
        return {}

    def parameters(self, config: Any) -> dict[str, str]:
        return {}

    def config_spec(self, config: Any, max_batch_size: int) -> ModelConfigSpec:
        """config.pbtxt contents; warm-up at batch 1 and at max batch."""
        fixed = self.warmup_sequence(config)
        warm_inputs = tuple(
            WarmupInput(
                t.name,
                t.data_type,
                tuple(fixed if d == -1 else d for d in t.dims),
                # Ids and labels must stay in range, which random bytes would not.
                "zero_data" if t.data_type == "TYPE_INT64" else "random_data",
            )
            for t in self.inputs(config)
        )
        warmups = tuple(
            WarmupConfig(f"warmup_batch_{b}", b, warm_inputs) for b in sorted({1, max_batch_size})
        )
        return ModelConfigSpec(
            name=self.name,
            max_batch_size=max_batch_size,
            inputs=self.inputs(config),
            outputs=self.outputs(config),
            preferred_batch_sizes=preferred_batch_sizes(max_batch_size),
            warmups=warmups,
            parameters=self.parameters(config),
        )


class SaganSpec(ModelSpec):
    name = "sagan_generator"
    config_type = sagan.SaganConfig
    variants = {"default": sagan.SaganConfig(), "benchmark": sagan.BENCHMARK}

    def build(self, config: sagan.SaganConfig) -> nn.Module:
        return sagan.SaganGenerator(config)

    def inputs(self, config: sagan.SaganConfig) -> tuple[TensorConfig, ...]:
        return (
            TensorConfig("z", "TYPE_FP32", (config.z_dim,)),
            TensorConfig("class_label", "TYPE_INT64", (1,)),
        )

    def outputs(self, config: sagan.SaganConfig) -> tuple[TensorConfig, ...]:
        image = (config.image_channels, config.image_size, config.image_size)
        tensors = (TensorConfig("image", "TYPE_FP32", image),)
        if config.export_attention:
            tensors += (TensorConfig("attention", "TYPE_FP32", config.attention_shape),)
        return tensors

    def sample(
        self,
        config: sagan.SaganConfig,
        batch: int,
        generator: torch.Generator,
        sequence: int | None = None,
    ) -> dict[str, torch.Tensor]:
        return {
            "z": torch.randn(batch, config.z_dim, generator=generator),
            "class_label": torch.randint(0, config.num_classes, (batch, 1), generator=generator),
        }

    def side_files(self, config: sagan.SaganConfig) -> dict[str, str]:
        return {LABELS_FILE: _labels_text(config.labels, config.num_classes)}

    def parameters(self, config: sagan.SaganConfig) -> dict[str, str]:
        limits = {"class_label": {"min": 0, "max": config.num_classes - 1}}
        return {"attnserve.labels": LABELS_FILE, "attnserve.input_limits": _json(limits)}


class SeCnnSpec(ModelSpec):
    name = "se_cnn_classifier"
    config_type = secnn.SeCnnConfig
    variants = {"default": secnn.SeCnnConfig(), "benchmark": secnn.BENCHMARK}

    def build(self, config: secnn.SeCnnConfig) -> nn.Module:
        return secnn.SeCnnClassifier(config)

    def inputs(self, config: secnn.SeCnnConfig) -> tuple[TensorConfig, ...]:
        return (
            TensorConfig(
                "image", "TYPE_FP32", (config.in_channels, config.image_size, config.image_size)
            ),
        )

    def outputs(self, config: secnn.SeCnnConfig) -> tuple[TensorConfig, ...]:
        k = config.num_classes
        tensors = (
            TensorConfig("logits", "TYPE_FP32", (k,)),
            TensorConfig("probabilities", "TYPE_FP32", (k,)),
        )
        if config.export_channel_weights:
            tensors += (
                TensorConfig("channel_weights", "TYPE_FP32", (sum(config.stage_channels),)),
            )
        return tensors

    def sample(
        self,
        config: secnn.SeCnnConfig,
        batch: int,
        generator: torch.Generator,
        sequence: int | None = None,
    ) -> dict[str, torch.Tensor]:
        side = config.image_size
        return {"image": torch.randn(batch, config.in_channels, side, side, generator=generator)}

    def side_files(self, config: secnn.SeCnnConfig) -> dict[str, str]:
        return {LABELS_FILE: _labels_text(config.labels, config.num_classes)}

    def parameters(self, config: secnn.SeCnnConfig) -> dict[str, str]:
        preprocess = {
            "mode": "L" if config.in_channels == 1 else "RGB",
            "height": config.image_size,
            "width": config.image_size,
            "mean": list(config.normalize_mean),
            "std": list(config.normalize_std),
        }
        return {
            "attnserve.labels": LABELS_FILE,
            "attnserve.preprocess": json.dumps(preprocess, separators=(",", ":")),
        }


class EncoderSpec(ModelSpec):
    name = "transformer_encoder"
    config_type = encoder.EncoderConfig
    variants = {"default": encoder.EncoderConfig(), "benchmark": encoder.BENCHMARK}

    def build(self, config: encoder.EncoderConfig) -> nn.Module:
        return encoder.TransformerEncoder(config)

    def inputs(self, config: encoder.EncoderConfig) -> tuple[TensorConfig, ...]:
        return (
            TensorConfig("input_ids", "TYPE_INT64", (-1,)),
            TensorConfig("attention_mask", "TYPE_INT64", (-1,)),
        )

    def outputs(self, config: encoder.EncoderConfig) -> tuple[TensorConfig, ...]:
        tensors = (
            TensorConfig("embedding", "TYPE_FP32", (config.d_model,)),
            TensorConfig("logits", "TYPE_FP32", (config.num_classes,)),
        )
        if config.export_attention:
            tensors += (TensorConfig("attention", "TYPE_FP32", (config.num_heads, -1, -1)),)
        return tensors

    def sample(
        self,
        config: encoder.EncoderConfig,
        batch: int,
        generator: torch.Generator,
        sequence: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Rows of random length: row 0 full, the last row all padding (batch >= 3)."""
        t = sequence or config.max_length
        lengths = torch.randint(1, t + 1, (batch,), generator=generator)
        lengths[0] = t
        if batch >= 3:
            lengths[-1] = 0
        real = torch.arange(t)[None, :] < lengths[:, None]  # [B, T]
        ids = torch.randint(encoder.BYTE_OFFSET, config.vocab_size, (batch, t), generator=generator)
        return {
            "input_ids": torch.where(real, ids, torch.full_like(ids, encoder.PAD_ID)),
            "attention_mask": real.long(),
        }

    def dynamic_axes(self, config: encoder.EncoderConfig) -> dict[str, dict[int, Dim]]:
        batch, sequence = Dim("batch"), Dim("sequence", min=1, max=config.max_length)
        return {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}

    def parity_sequences(self, config: encoder.EncoderConfig) -> tuple[int | None, ...]:
        return (max(2, config.max_length // 8 + 1), config.max_length)  # short, full

    def export_sequence(self, config: encoder.EncoderConfig) -> int | None:
        return max(3, config.max_length // 4 + 1)  # >= 2 and != batch, so nothing specialises

    def warmup_sequence(self, config: encoder.EncoderConfig) -> int | None:
        return config.max_length  # the largest shape the model serves

    def side_files(self, config: encoder.EncoderConfig) -> dict[str, str]:
        tokenizer = json.dumps(encoder.byte_tokenizer_spec(config), indent=2) + "\n"
        files = {TOKENIZER_FILE: tokenizer}
        if config.labels is not None:
            files[LABELS_FILE] = _labels_text(config.labels, config.num_classes)
        return files

    def parameters(self, config: encoder.EncoderConfig) -> dict[str, str]:
        # Out-of-vocabulary ids and sequences past the position table would fail inside
        # ONNX Runtime; declaring the limits lets the server refuse them with a clear message.
        limits = {
            "input_ids": {"min": 0, "max": config.vocab_size - 1, "max_dims": [config.max_length]},
            "attention_mask": {"min": 0, "max": 1, "max_dims": [config.max_length]},
        }
        params = {
            "attnserve.pad_inputs": "input_ids:0,attention_mask:0",
            # Every padded token is computed and thrown away (attention more than linearly):
            # batches keep their padding within a quarter of their real tokens.
            "attnserve.max_padding_ratio": MAX_PADDING_RATIO,
            "attnserve.tokenizer": TOKENIZER_FILE,
            "attnserve.input_limits": _json(limits),
        }
        if config.labels is not None:
            params["attnserve.labels"] = LABELS_FILE
        return params


class CbamSpec(ModelSpec):
    name = "cbam_classifier"
    config_type = cbam.CbamConfig
    variants = {"default": cbam.CbamConfig(), "benchmark": cbam.CbamConfig()}

    def build(self, config: cbam.CbamConfig) -> nn.Module:
        return cbam.CbamClassifier(config)

    def inputs(self, config: cbam.CbamConfig) -> tuple[TensorConfig, ...]:
        return (_image_input(config),)

    def outputs(self, config: cbam.CbamConfig) -> tuple[TensorConfig, ...]:
        k = config.num_classes
        maps = tuple(
            TensorConfig(f"spatial_attention_{i}", "TYPE_FP32", (side, side))
            for i, side in enumerate(config.map_sides)
        )
        return (
            TensorConfig("logits", "TYPE_FP32", (k,)),
            TensorConfig("probabilities", "TYPE_FP32", (k,)),
            TensorConfig("channel_weights", "TYPE_FP32", (sum(config.stage_channels),)),
            *maps,
        )

    def sample(
        self,
        config: cbam.CbamConfig,
        batch: int,
        generator: torch.Generator,
        sequence: int | None = None,
    ) -> dict[str, torch.Tensor]:
        return _image_sample(config, batch, generator)

    def side_files(self, config: cbam.CbamConfig) -> dict[str, str]:
        return {LABELS_FILE: _labels_text(config.labels, config.num_classes)}

    def parameters(self, config: cbam.CbamConfig) -> dict[str, str]:
        return {
            **_image_parameters(config),
            "attnserve.channel_stages": ",".join(str(c) for c in config.stage_channels),
        }


class StnSpec(ModelSpec):
    name = "stn_classifier"
    config_type = stn.StnConfig
    variants = {"default": stn.StnConfig(), "benchmark": stn.StnConfig()}

    def build(self, config: stn.StnConfig) -> nn.Module:
        return stn.StnClassifier(config)

    def inputs(self, config: stn.StnConfig) -> tuple[TensorConfig, ...]:
        return (_image_input(config),)

    def outputs(self, config: stn.StnConfig) -> tuple[TensorConfig, ...]:
        k, side = config.num_classes, config.rectified_size
        return (
            TensorConfig("logits", "TYPE_FP32", (k,)),
            TensorConfig("probabilities", "TYPE_FP32", (k,)),
            TensorConfig("theta", "TYPE_FP32", (2, 3)),
            TensorConfig("rectified_image", "TYPE_FP32", (config.in_channels, side, side)),
        )

    def sample(
        self,
        config: stn.StnConfig,
        batch: int,
        generator: torch.Generator,
        sequence: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Smooth random images fading to black at the border, like a digit on its canvas.

        Bilinear sampling turns float rounding in the grid coordinates (~1e-6 px) into output
        errors in proportion to the image's gradient, and the crop's edge meets the zero
        padding: white noise, or a bright border, would exceed the parity tolerance where no
        real input does. So: noise at a quarter of the side, bilinear up, times a window that
        is 1 in the middle and 0 at the edges, around the normalised black level.
        """
        side, coarse = config.image_size, max(2, config.image_size // 4)
        noise = torch.randn(batch, config.in_channels, coarse, coarse, generator=generator)
        smooth = F.interpolate(noise, size=(side, side), mode="bilinear", align_corners=False)
        ramp = torch.sin(torch.linspace(0.0, torch.pi, side)).clamp(min=0.0)
        window = (ramp[:, None] * ramp[None, :]) ** 0.5
        mean = torch.tensor(config.normalize_mean).reshape(1, -1, 1, 1)
        std = torch.tensor(config.normalize_std).reshape(1, -1, 1, 1)
        black = -mean / std
        return {"image": black + (smooth.abs() * 1.5) * window}

    def side_files(self, config: stn.StnConfig) -> dict[str, str]:
        return {LABELS_FILE: _labels_text(config.labels, config.num_classes)}

    def parameters(self, config: stn.StnConfig) -> dict[str, str]:
        return _image_parameters(config)


class SasaSpec(ModelSpec):
    name = "sasa_classifier"
    config_type = sasa.SasaConfig
    variants = {"default": sasa.SasaConfig(), "benchmark": sasa.SasaConfig()}

    def build(self, config: sasa.SasaConfig) -> nn.Module:
        return sasa.SasaClassifier(config)

    def inputs(self, config: sasa.SasaConfig) -> tuple[TensorConfig, ...]:
        return (_image_input(config),)

    def outputs(self, config: sasa.SasaConfig) -> tuple[TensorConfig, ...]:
        k, side, w = config.num_classes, config.stage_sides[0], config.window
        return (
            TensorConfig("logits", "TYPE_FP32", (k,)),
            TensorConfig("probabilities", "TYPE_FP32", (k,)),
            TensorConfig("window_attention", "TYPE_FP32", (config.stage_heads[0], side, side, w, w)),
        )

    def sample(
        self,
        config: sasa.SasaConfig,
        batch: int,
        generator: torch.Generator,
        sequence: int | None = None,
    ) -> dict[str, torch.Tensor]:
        return _image_sample(config, batch, generator)

    def side_files(self, config: sasa.SasaConfig) -> dict[str, str]:
        return {LABELS_FILE: _labels_text(config.labels, config.num_classes)}

    def parameters(self, config: sasa.SasaConfig) -> dict[str, str]:
        return _image_parameters(config)


def _image_input(config: Any) -> TensorConfig:
    """``image`` [C, H, W] of a square-image classifier config."""
    side = config.image_size
    return TensorConfig("image", "TYPE_FP32", (config.in_channels, side, side))


def _image_sample(config: Any, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    side = config.image_size
    return {"image": torch.randn(batch, config.in_channels, side, side, generator=generator)}


def _image_parameters(config: Any) -> dict[str, str]:
    """Labels and the server-side preprocess (decode, resize, scale to [0, 1], normalise)."""
    preprocess = {
        "mode": "L" if config.in_channels == 1 else "RGB",
        "height": config.image_size,
        "width": config.image_size,
        "mean": list(config.normalize_mean),
        "std": list(config.normalize_std),
    }
    return {"attnserve.labels": LABELS_FILE, "attnserve.preprocess": _json(preprocess)}


def ragged_ids(
    batch: int, length: int, vocab_size: int, generator: torch.Generator
) -> torch.Tensor:
    """[batch, length] byte ids, rows of random length padded with PAD: row 0 full, the last
    row all padding when ``batch >= 3`` (the case a key-padding mask must survive)."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    if batch >= 3:
        lengths[-1] = 0
    real = torch.arange(length)[None, :] < lengths[:, None]
    ids = torch.randint(encoder.BYTE_OFFSET, vocab_size, (batch, length), generator=generator)
    return torch.where(real, ids, torch.full_like(ids, encoder.PAD_ID))


class LangIdAttentionSpec(EncoderSpec):
    """One classifier of the attention family (export/models/langid_attention.py). Same
    tensors in, tokenizer, limits and padding rules as the encoder (the fields it reads exist
    on both configs); embedding + logits + the pooling query's weights out."""

    config_type = family.AttentionConfig

    def __init__(self, name: str, config: family.AttentionConfig) -> None:
        self.name = name  # type: ignore[misc]  # one class, several served names
        self.variants = {"default": config, "benchmark": config}  # type: ignore[misc]

    def build(self, config: family.AttentionConfig) -> nn.Module:  # type: ignore[override]
        return family.build(config)

    def outputs(self, config: family.AttentionConfig) -> tuple[TensorConfig, ...]:  # type: ignore[override]
        tensors = (
            TensorConfig("embedding", "TYPE_FP32", (config.d_model,)),
            TensorConfig("logits", "TYPE_FP32", (config.num_classes,)),
        )
        if config.export_attention:
            tensors += (TensorConfig("attention", "TYPE_FP32", (config.heads, 1, -1)),)
            if config.self_attention_layers:
                tensors += (
                    TensorConfig("self_attention", "TYPE_FP32", (config.heads, -1, -1)),
                )
        return tensors

    def sample(  # type: ignore[override]
        self,
        config: family.AttentionConfig,
        batch: int,
        generator: torch.Generator,
        sequence: int | None = None,
    ) -> dict[str, torch.Tensor]:
        ids = ragged_ids(batch, sequence or config.max_length, config.vocab_size, generator)
        return {"input_ids": ids, "attention_mask": (ids != encoder.PAD_ID).long()}


class LangIdPairSpec(ModelSpec):
    """The cross-attention pair model: two token sequences of their own lengths in ("same
    language?"), logits and the cross-attention map out. The batcher pads each input on its
    own and cuts the map back to the request's query x source lengths
    (``attnserve.output_lengths``)."""

    name = "langid_pair"
    config_type = family.AttentionConfig
    variants = {"default": family.LANGID_PAIR, "benchmark": family.LANGID_PAIR}
    INPUTS = ("query_ids", "source_ids")

    def build(self, config: family.AttentionConfig) -> nn.Module:
        return family.build(config)

    def inputs(self, config: family.AttentionConfig) -> tuple[TensorConfig, ...]:
        return tuple(TensorConfig(name, "TYPE_INT64", (-1,)) for name in self.INPUTS)

    def outputs(self, config: family.AttentionConfig) -> tuple[TensorConfig, ...]:
        tensors = (TensorConfig("logits", "TYPE_FP32", (config.num_classes,)),)
        if config.export_attention:
            tensors += (TensorConfig("cross_attention", "TYPE_FP32", (config.heads, -1, -1)),)
        return tensors

    @staticmethod
    def source_length(sequence: int) -> int:
        """A source length unlike the query's (and unlike 1 and 2, which torch.export would
        specialise), so the graph never ties the two."""
        return max(3, (2 * sequence) // 3 + 1)

    def sample(
        self,
        config: family.AttentionConfig,
        batch: int,
        generator: torch.Generator,
        sequence: int | None = None,
    ) -> dict[str, torch.Tensor]:
        t = sequence or config.max_length
        return {
            "query_ids": ragged_ids(batch, t, config.vocab_size, generator),
            "source_ids": ragged_ids(batch, self.source_length(t), config.vocab_size, generator),
        }

    def dynamic_axes(self, config: family.AttentionConfig) -> dict[str, dict[int, Dim]]:
        batch = Dim("batch")
        query = Dim("query", min=1, max=config.max_length)
        source = Dim("source", min=1, max=config.max_length)
        return {"query_ids": {0: batch, 1: query}, "source_ids": {0: batch, 1: source}}

    def parity_sequences(self, config: family.AttentionConfig) -> tuple[int | None, ...]:
        return (max(2, config.max_length // 8 + 1), config.max_length)

    def export_sequence(self, config: family.AttentionConfig) -> int | None:
        return max(3, config.max_length // 4 + 1)

    def warmup_sequence(self, config: family.AttentionConfig) -> int | None:
        return config.max_length

    def side_files(self, config: family.AttentionConfig) -> dict[str, str]:
        tokenizer = json.dumps(encoder.byte_tokenizer_spec(config), indent=2) + "\n"  # type: ignore[arg-type]
        return {TOKENIZER_FILE: tokenizer, LABELS_FILE: _labels_text(config.labels, config.num_classes)}

    def parameters(self, config: family.AttentionConfig) -> dict[str, str]:
        # min 1: the graph reads id 0 as padding (it takes no mask), so a client may not send it.
        limit = {"min": 1, "max": config.vocab_size - 1, "max_dims": [config.max_length]}
        return {
            "attnserve.pad_inputs": "query_ids:0,source_ids:0",
            # Each axis of the map follows its own input: [batch, heads, query, source].
            "attnserve.output_lengths": "cross_attention:2=query_ids,3=source_ids",
            "attnserve.max_padding_ratio": MAX_PADDING_RATIO,
            "attnserve.tokenizer": TOKENIZER_FILE,
            "attnserve.input_limits": _json({name: limit for name in self.INPUTS}),
            "attnserve.labels": LABELS_FILE,
        }


SPECS: dict[str, ModelSpec] = {  # keyed and ordered as export.defaults.MODEL_NAMES
    spec.name: spec
    for spec in (
        SaganSpec(),
        SeCnnSpec(),
        EncoderSpec(),
        CbamSpec(),
        StnSpec(),
        SasaSpec(),
        LangIdAttentionSpec("langid_dot", family.LANGID_DOT),
        LangIdAttentionSpec("langid_additive", family.LANGID_ADDITIVE),
        LangIdAttentionSpec("langid_mha", family.LANGID_MHA),
        LangIdPairSpec(),
    )
}
assert tuple(SPECS) == MODEL_NAMES
