"""Transformer encoder: byte-level sequence classifier with a pooled embedding.

Paper: Vaswani et al., "Attention Is All You Need" (NeurIPS 2017, arXiv:1706.03762) —
multi-head scaled dot-product attention, softmax(Q K^T / sqrt(d_head)) V, and a position-wise
feed-forward network. Layers are pre-LN (Xiong et al. 2020): normalise before each sublayer
and once at the end, which trains without warm-up tricks and changes nothing at inference.

Padding is handled by a key-padding mask: padded keys get the most negative float before the
softmax, so they receive exactly zero weight. A row made only of padding then sees every score
equal and attends uniformly (finite, never NaN), and its mean-pooled embedding is zero
because the pooling divides by max(real tokens, 1).

Tokens are bytes, so no vocabulary file is ever needed: 0=PAD, 1=BOS, 2=EOS, 3=UNK and byte b
is id 4+b (vocabulary 260). The server encodes text with the side file ``tokenizer.json``.

Served tensors: ``input_ids`` and ``attention_mask`` [B, T] int64 (mask 1 real, 0 pad) in;
``embedding`` [B, d_model], ``logits`` [B, num_classes] and optionally ``attention``
[B, heads, T, T] (the last layer's weights) out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
BYTE_OFFSET = 4
BYTE_VOCAB_SIZE = BYTE_OFFSET + 256

# The ten languages the shipped weights identify (ISO 639-1), in the order of the head's
# classes: export/weights/transformer_encoder.md; export/train/langid_data.LANGUAGES must match.
DEFAULT_LABELS = ("en", "de", "fr", "es", "it", "nl", "pt", "pl", "sv", "tr")


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of one encoder; the default is small, ``BENCHMARK`` has BERT-base's shape."""

    vocab_size: int = BYTE_VOCAB_SIZE
    max_length: int = 128
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 512
    num_classes: int = 10
    layer_norm_eps: float = 1e-5
    export_attention: bool = True
    labels: tuple[str, ...] | None = DEFAULT_LABELS

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError("d_model must be divisible by num_heads")
        if self.vocab_size < BYTE_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be >= {BYTE_VOCAB_SIZE} (byte-level tokens)")
        if min(self.max_length, self.d_model, self.num_layers, self.ffn_dim, self.num_classes) < 1:
            raise ValueError("sizes must be positive")
        if self.max_length < 2:
            raise ValueError("max_length must be >= 2")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError("labels must have num_classes entries (or be null)")


BENCHMARK = EncoderConfig(d_model=768, num_layers=12, num_heads=12, ffn_dim=3072)


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product attention over all heads at once, padded keys masked out."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(
        self, x: torch.Tensor, key_is_real: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        head_dim = d // self.num_heads
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, Dh]
        scores = (q @ k.transpose(-2, -1)) * head_dim**-0.5  # [B, H, T, T]
        scores = scores.masked_fill(~key_is_real[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)  # rows sum to 1 over keys
        out = (weights @ v).transpose(1, 2).reshape(b, t, d)  # [B, T, D]
        return self.proj(out), weights


class EncoderLayer(nn.Module):
    """Pre-LN layer: x + attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = MultiHeadSelfAttention(config.d_model, config.num_heads)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(config.d_model, config.ffn_dim),
            nn.GELU(),
            nn.Linear(config.ffn_dim, config.d_model),
        )

    def forward(
        self, x: torch.Tensor, key_is_real: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attended, weights = self.attn(self.norm1(x), key_is_real)
        x = x + attended
        return x + self.ffn(self.norm2(x)), weights


class TransformerEncoder(nn.Module):
    """input_ids, attention_mask [B, T] -> embedding [B, D], logits [B, K] (+ attention)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=PAD_ID)
        self.positions = nn.Parameter(torch.randn(config.max_length, config.d_model) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.d_model, config.num_classes)

    @property
    def output_names(self) -> list[str]:
        names = ["embedding", "logits"]
        return [*names, "attention"] if self.config.export_attention else names

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        b, t = input_ids.shape
        key_is_real = attention_mask != 0  # [B, T] bool
        # index_select rather than self.tokens(...): the exporter names an embedding node
        # "embedding", which collides with the output of that name (non-SSA graph).
        x = self.tokens.weight.index_select(0, input_ids.reshape(-1)).reshape(b, t, -1)
        x = x + self.positions[:t]  # [B, T, D]
        weights = None
        for layer in self.layers:
            x, weights = layer(x, key_is_real)  # weights: [B, H, T, T]
        x = self.norm(x)
        real = key_is_real.unsqueeze(-1).to(x.dtype)  # [B, T, 1]
        count = real.sum(dim=1).clamp(min=1.0)  # [B, 1]; all-padding rows divide by 1
        embedding = (x * real).sum(dim=1) / count  # mean over real tokens -> [B, D]
        logits = self.classifier(embedding)  # [B, K]
        if self.config.export_attention:
            return embedding, logits, weights
        return embedding, logits


def byte_tokenizer_spec(config: EncoderConfig) -> dict[str, object]:
    """The tokenizer.json contents: how the server turns text into input_ids."""
    return {
        "type": "byte_level",
        "encoding": "utf-8",
        "pad_id": PAD_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "unk_id": UNK_ID,
        "byte_offset": BYTE_OFFSET,
        "vocab_size": config.vocab_size,
        "max_length": config.max_length,
        "add_bos": True,
        "add_eos": True,
        "truncation": "right",  # keep the first max_length - 2 bytes, then EOS
    }
