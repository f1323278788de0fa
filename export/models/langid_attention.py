"""Dot, additive and multi-head attention side by side: byte-level phrase classifiers.

One family, one config: every member shares the tokenizer (the encoder's byte-level ids), the
data (the bundled language-ID phrases) and the encoder in front of the attention, and differs
only in the attention layer.

- Encoder: byte n-gram embeddings plus learned positions. Token ``t`` is the sum of the
  embeddings of the byte ending at ``t`` and of the 2..``ngram_orders``-byte windows ending at
  ``t`` (hashed into ``hash_buckets`` rows, as fastText does; Joulin et al. 2017). Windows only
  look back, so a real token never sees the padding after it: a request's answer does not
  depend on how far its batch was padded.
- Scores (``score``), per head, between a query ``q`` and a key ``k`` of ``d`` dims:
  ``dot`` q·k (Luong et al. 2015), ``scaled_dot`` q·k / sqrt(d) (Vaswani et al. 2017),
  ``general`` qᵀ W k (Luong), ``additive`` vᵀ tanh(W q + U k) (Bahdanau et al. 2015).
- Attention pooling: a learned query per head attends over the tokens; with
  ``self_attention_layers`` = 1 (the multi-head member) one pre-LN self-attention layer runs
  first. ``heads`` splits every attention layer into heads of ``d_model / heads`` dims, each
  with its own query/key/value projections (a multi-head layer with one head and identity
  projections *is* scaled dot attention: tests/export/test_langid_attention.py proves it).
- Cross-attention (:class:`PairClassifier`): each token of a query phrase attends over the
  tokens of a separate source phrase; the pair is judged "same language?".

Key padding: a padded key gets the most negative float before the softmax and the weights are
multiplied by the key mask after it, so a padded token gets exactly zero weight for every score
function, and a row with no real key (an all-padding request) gets all-zero weights.

Served tensors (ids as :mod:`export.models.transformer_encoder`: 0 PAD, 1 BOS, 2 EOS, bytes +4):
``input_ids``, ``attention_mask`` [B, T] int64 in; ``embedding`` [B, d_model], ``logits``
[B, K], ``attention`` [B, heads, 1, T] (the pooling query's weights) and, with a self-attention
layer, ``self_attention`` [B, heads, T, T] out. The pair model takes ``query_ids`` [B, Tq] and
``source_ids`` [B, Ts] (the mask is ``ids != 0``: ids and mask can never disagree) and returns
``logits`` [B, 2] and ``cross_attention`` [B, heads, Tq, Ts].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from export.models.transformer_encoder import BYTE_VOCAB_SIZE, DEFAULT_LABELS, PAD_ID

SCORES = ("dot", "scaled_dot", "general", "additive")
PAIR_LABELS = ("different", "same")
# Odd multiplier mixing an n-gram's exact index before it is cut to the bucket count.
_HASH_MULTIPLIER = 2654435761
_INDEX_MODULUS = 2**31
MAX_NGRAM_ORDER = 4  # vocab_size**3 * 260 and 2**31 * the multiplier stay inside int64


@dataclass(frozen=True)
class AttentionConfig:
    """One member of the family; the module-level constants are the served ones."""

    score: str = "scaled_dot"
    heads: int = 1
    self_attention_layers: int = 0  # 0: pooling only; 1: one self-attention layer first
    cross: bool = False  # the pair model (query phrase over source phrase)
    d_model: int = 64
    additive_dim: int = 32  # Bahdanau's hidden size per head
    ngram_orders: int = 3  # bytes, 2..n-byte windows
    hash_buckets: int = 16384  # rows per n-gram order >= 2
    vocab_size: int = BYTE_VOCAB_SIZE
    max_length: int = 128
    num_classes: int = 10
    export_attention: bool = True
    labels: tuple[str, ...] | None = DEFAULT_LABELS

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.heads < 1 or self.d_model % self.heads:
            raise ValueError("heads must be >= 1 and divide d_model")
        if self.self_attention_layers not in (0, 1):
            raise ValueError("self_attention_layers must be 0 or 1")
        if self.vocab_size < BYTE_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be >= {BYTE_VOCAB_SIZE} (byte-level tokens)")
        if min(self.d_model, self.additive_dim, self.ngram_orders, self.hash_buckets) < 1:
            raise ValueError("sizes must be positive")
        if self.ngram_orders > MAX_NGRAM_ORDER:
            raise ValueError(f"ngram_orders must be <= {MAX_NGRAM_ORDER}")
        if self.max_length < 2 or self.num_classes < 2:
            raise ValueError("max_length and num_classes must be >= 2")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError("labels must have num_classes entries (or be null)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads


LANGID_DOT = AttentionConfig(score="scaled_dot", heads=1)
LANGID_ADDITIVE = AttentionConfig(score="additive", heads=1)
LANGID_MHA = AttentionConfig(score="scaled_dot", heads=4, self_attention_layers=1)
LANGID_PAIR = AttentionConfig(
    score="scaled_dot", heads=1, cross=True, num_classes=2, labels=PAIR_LABELS
)


def masked_softmax(scores: torch.Tensor, key_is_real: torch.Tensor) -> torch.Tensor:
    """softmax over the last axis with padded keys at exactly zero.

    ``scores`` [B, H, Tq, Tk], ``key_is_real`` [B, Tk] bool. The fill makes real keys share all
    the mass; the multiply makes a row with no real key all zeros instead of uniform.
    """
    real = key_is_real[:, None, None, :]
    scores = scores.masked_fill(~real, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) * real.to(scores.dtype)


def scaled_dot_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_is_real: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain scaled dot attention, no heads, no projections: [B,Tq,D],[B,Tk,D] -> [B,Tq,D], weights [B,Tq,Tk]."""
    scores = (query @ key.transpose(-2, -1)) / math.sqrt(query.shape[-1])
    weights = masked_softmax(scores[:, None], key_is_real)[:, 0]
    return weights @ value, weights


class MultiHeadAttention(nn.Module):
    """``heads`` attention heads of one score function, each with its own projections."""

    def __init__(self, d_model: int, heads: int, score: str, additive_dim: int = 32) -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}")
        self.heads, self.score = heads, score
        head_dim = d_model // heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        if score == "general":  # Luong's W, one per head, starting at the identity (= dot)
            self.bilinear = nn.Parameter(torch.eye(head_dim).repeat(heads, 1, 1))
        if score == "additive":  # Bahdanau: W, U [H, Dh, A] and v [H, A]
            scale = head_dim**-0.5
            self.w_query = nn.Parameter(torch.randn(heads, head_dim, additive_dim) * scale)
            self.u_key = nn.Parameter(torch.randn(heads, head_dim, additive_dim) * scale)
            self.v = nn.Parameter(torch.randn(heads, additive_dim) * additive_dim**-0.5)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)  # [B, H, T, Dh]

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """[B, H, Tq, Dh], [B, H, Tk, Dh] -> [B, H, Tq, Tk] before the mask."""
        if self.score == "additive":
            wq = torch.einsum("bhqd,hda->bhqa", q, self.w_query)[:, :, :, None, :]
            uk = torch.einsum("bhkd,hda->bhka", k, self.u_key)[:, :, None, :, :]
            return torch.einsum("bhqka,ha->bhqk", torch.tanh(wq + uk), self.v)
        if self.score == "general":
            q = torch.einsum("bhqd,hde->bhqe", q, self.bilinear)
        scores = q @ k.transpose(-2, -1)
        return scores / math.sqrt(q.shape[-1]) if self.score == "scaled_dot" else scores

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_is_real: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, Tq, D] over [B, Tk, D] -> [B, Tq, D] and weights [B, H, Tq, Tk]."""
        b, tq, d = query.shape
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(key))
        v = self._split(self.v_proj(value))
        weights = masked_softmax(self.scores(q, k), key_is_real)
        out = (weights @ v).transpose(1, 2).reshape(b, tq, d)
        return self.out_proj(out), weights


class NgramEncoder(nn.Module):
    """ids [B, T] -> token states [B, T, D]: byte + hashed 2..n-gram embeddings + positions."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.bytes = nn.Embedding(config.vocab_size, d, padding_idx=PAD_ID)
        self.ngrams = nn.ModuleList(
            nn.Embedding(config.hash_buckets, d) for _ in range(config.ngram_orders - 1)
        )
        self.positions = nn.Parameter(torch.randn(config.max_length, d) * 0.02)
        self.norm = nn.LayerNorm(d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        # index_select rather than calling the Embedding: see transformer_encoder.py (an
        # exporter node named "embedding" would collide with the output of that name).
        x = self.bytes.weight.index_select(0, ids.reshape(-1)).reshape(b, t, -1)
        exact, previous = ids, ids
        for order, table in enumerate(self.ngrams, start=2):
            # The window ending at t grows by one byte to the left (PAD before the start);
            # its index in base vocab_size, cut to 31 bits so int64 products never overflow.
            previous = torch.cat([torch.zeros_like(previous[:, :1]), previous[:, :-1]], dim=1)
            exact = (previous * self.config.vocab_size ** (order - 1) + exact) % _INDEX_MODULUS
            bucket = (exact * _HASH_MULTIPLIER) % self.config.hash_buckets
            x = x + table.weight.index_select(0, bucket.reshape(-1)).reshape(b, t, -1)
        return self.norm(x + self.positions[:t])


class SelfAttentionLayer(nn.Module):
    """Pre-LN: x + attention(LN(x)) over the sequence's own real tokens."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.attn = MultiHeadAttention(
            config.d_model, config.heads, config.score, config.additive_dim
        )

    def forward(
        self, x: torch.Tensor, key_is_real: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(x)
        attended, weights = self.attn(h, h, h, key_is_real)
        return x + attended, weights


class AttentionPool(nn.Module):
    """A learned query per model attends over the tokens: [B, T, D] -> [B, D], [B, H, 1, T]."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, config.d_model) * 0.02)
        self.attn = MultiHeadAttention(
            config.d_model, config.heads, config.score, config.additive_dim
        )

    def forward(
        self, x: torch.Tensor, key_is_real: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        query = self.query.expand(x.shape[0], 1, -1)
        pooled, weights = self.attn(query, x, x, key_is_real)
        return pooled[:, 0], weights


class AttentionClassifier(nn.Module):
    """input_ids, attention_mask [B, T] -> embedding [B, D], logits [B, K] (+ attention maps)."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        if config.cross:
            raise ValueError("a cross-attention config builds PairClassifier")
        self.config = config
        self.encoder = NgramEncoder(config)
        self.layers = nn.ModuleList(
            SelfAttentionLayer(config) for _ in range(config.self_attention_layers)
        )
        self.pool = AttentionPool(config)
        self.norm = nn.LayerNorm(config.d_model)
        self.classifier = nn.Linear(config.d_model, config.num_classes)

    @property
    def output_names(self) -> list[str]:
        if not self.config.export_attention:
            return ["embedding", "logits"]
        extra = ["self_attention"] if self.config.self_attention_layers else []
        return ["embedding", "logits", "attention", *extra]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        key_is_real = attention_mask != 0  # [B, T]
        x = self.encoder(input_ids)  # [B, T, D]
        self_weights = []
        for layer in self.layers:
            x, w = layer(x, key_is_real)  # w: [B, H, T, T]
            self_weights.append(w)
        pooled, weights = self.pool(x, key_is_real)  # [B, D], [B, H, 1, T]
        embedding = self.norm(pooled)
        logits = self.classifier(embedding)
        if not self.config.export_attention:
            return embedding, logits
        return (embedding, logits, weights, *self_weights)


class PairClassifier(nn.Module):
    """query_ids [B, Tq], source_ids [B, Ts] -> logits [B, 2] ("different", "same"),
    cross_attention [B, H, Tq, Ts]: which source tokens each query token used.

    Both phrases go through one shared encoder. Each query token attends over the source
    tokens; the token's own state and what it read (their product and difference, as in
    ESIM, Chen et al. 2017) feed an MLP, whose outputs are averaged over the real query tokens.
    """

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        if not config.cross:
            raise ValueError("PairClassifier needs a cross-attention config (cross=True)")
        self.config = config
        d = config.d_model
        self.encoder = NgramEncoder(config)
        self.cross = MultiHeadAttention(d, config.heads, config.score, config.additive_dim)
        self.compare = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Linear(d, d))
        self.norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, config.num_classes)

    @property
    def output_names(self) -> list[str]:
        return ["logits", "cross_attention"] if self.config.export_attention else ["logits"]

    def forward(self, query_ids: torch.Tensor, source_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        query_is_real = query_ids != PAD_ID  # [B, Tq]
        source_is_real = source_ids != PAD_ID  # [B, Ts]
        q = self.encoder(query_ids)  # [B, Tq, D]
        s = self.encoder(source_ids)  # [B, Ts, D]
        read, weights = self.cross(q, s, s, source_is_real)  # [B, Tq, D], [B, H, Tq, Ts]
        features = self.compare(torch.cat([q, read, q * read, (q - read).abs()], dim=-1))
        real = query_is_real.unsqueeze(-1).to(features.dtype)  # [B, Tq, 1]
        pooled = (features * real).sum(dim=1) / real.sum(dim=1).clamp(min=1.0)  # [B, D]
        logits = self.classifier(self.norm(pooled))
        return (logits, weights) if self.config.export_attention else (logits,)


def build(config: AttentionConfig) -> nn.Module:
    """The family member ``config`` describes."""
    return PairClassifier(config) if config.cross else AttentionClassifier(config)
