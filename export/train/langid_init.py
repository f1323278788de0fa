"""A structured start for the encoder: first-layer heads that look at fixed neighbours.

Why: trained from the default initialisation, the encoder settles for a bag of bytes
(measured: shuffling the characters of a phrase left 97% of its predictions unchanged, and
accuracy stuck near a character-unigram Naive Bayes, ~80%). Its learned positions start at
0.02 next to token embeddings of norm ~11, so attention cannot tell neighbours apart, and
the order-free solution is found long before an order-aware one. Language identity lives in
character n-grams, so we start where an n-gram model starts.

How (initialisation only; the architecture and the exported graph are unchanged, and every
weight keeps training):

- the residual stream is split: dims ``[0, P)`` carry position, the rest carry the byte.
  Positions get sinusoids at :data:`FREQUENCIES` random frequencies in that subspace, token
  embeddings are zero there;
- each first-layer head ``h`` gets a query that rotates the position of token ``i`` to that
  of ``i + offset[h]`` and a key that reads the position, so its scores peak at exactly that
  neighbour (a sinusoid pair rotated by ``w * d`` is the pair of position ``i + d``); its
  value reads the byte part. Offsets -1, +1, -2, +2: the layer's FFN then sees bigrams and
  skip-grams, the features an n-gram model is built from.

This is the "mimetic"/structured-initialisation idea (Trockman & Kolter 2023 initialise
attention to mimic what trained layers do) made explicit for local n-grams.
"""

from __future__ import annotations

import math

import torch

from export.models.transformer_encoder import TransformerEncoder

OFFSETS = (-1, 1, -2, 2)  # one per first-layer head (the default encoder has 4 heads)
FREQUENCIES = 16  # sinusoid pairs: the positional subspace is 2 * FREQUENCIES dims
SHARPNESS = 10.0  # score gap (logits) between the chosen neighbour and a typical other


@torch.no_grad()
def local_ngram_init(model: TransformerEncoder, generator: torch.Generator) -> None:
    """Re-initialise positions, token embeddings and the first attention layer in place."""
    config = model.config
    d, heads = config.d_model, config.num_heads
    head_dim = d // heads
    p = 2 * FREQUENCIES
    if head_dim < p or d <= p:
        return  # not the default shape: keep the default initialisation
    # Incommensurate frequencies in (0.15, 3.0) rad: cos-sums over many positions stay small
    # away from zero lag, so a query matches one offset and not its aliases.
    omega = 0.15 + 2.85 * torch.rand(FREQUENCIES, generator=generator)
    positions = torch.arange(config.max_length, dtype=torch.float32)[:, None] * omega  # [T, F]
    # After the first LayerNorm the stream has unit RMS per dim; amplitude 1 keeps position and
    # byte parts on the same scale.
    model.positions.zero_()
    model.positions[:, 0:p:2] = torch.sin(positions)
    model.positions[:, 1:p:2] = torch.cos(positions)
    tokens = torch.randn(config.vocab_size, d - p, generator=generator)
    model.tokens.weight.zero_()
    model.tokens.weight[:, p:] = tokens
    model.tokens.weight[0].zero_()  # padding

    attention = model.layers[0].attn
    weight = attention.qkv.weight  # [3D, D]: query rows, key rows, value rows
    bias = attention.qkv.bias
    weight[: 2 * d].zero_()
    bias[: 2 * d].zero_()
    # Score gap: peak - typical = scale^2 * (F - ~0) / sqrt(head_dim); solve for scale.
    scale = math.sqrt(SHARPNESS * math.sqrt(head_dim) / FREQUENCIES)
    for h in range(heads):
        offset = OFFSETS[h % len(OFFSETS)]
        rows = slice(h * head_dim, h * head_dim + p // 2 * 2)  # first p dims of the head
        q = torch.zeros(p, d)
        k = torch.zeros(p, d)
        for f in range(FREQUENCIES):
            angle = float(omega[f]) * offset
            c, s = math.cos(angle), math.sin(angle)
            # (sin(w i), cos(w i)) rotated by w * offset -> (sin(w (i+o)), cos(w (i+o)))
            q[2 * f, 2 * f], q[2 * f, 2 * f + 1] = c, s
            q[2 * f + 1, 2 * f], q[2 * f + 1, 2 * f + 1] = -s, c
            k[2 * f, 2 * f] = 1.0
            k[2 * f + 1, 2 * f + 1] = 1.0
        if rows.stop - rows.start > head_dim:
            continue
        weight[rows] = q * scale
        weight[d + rows.start : d + rows.stop] = k * scale
    # Values read only the byte part, so a head hands over its neighbour's byte.
    weight[2 * d :, :p] = 0.0
