"""The attention family on its own: the MHA == scaled-dot equivalence (PyTorch and ONNX) and
the key-padding mask for every score function."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import Dim

from export.models import langid_attention as family
from export.onnx_export import export_onnx, open_session

FAMILY = {"langid_dot": family.LANGID_DOT, "langid_additive": family.LANGID_ADDITIVE, "langid_mha": family.LANGID_MHA}
D = 16


def _identity_mha(d_model: int) -> family.MultiHeadAttention:
    """One head, every projection the identity and no bias: what the equivalence is about."""
    mha = family.MultiHeadAttention(d_model, heads=1, score="scaled_dot")
    with torch.no_grad():
        for proj in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj):
            proj.weight.copy_(torch.eye(d_model))
            proj.bias.zero_()
    return mha.eval()


def _ragged_mask(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """[B, T] bool: row 0 full, row 1 one real key, the last row no real key, others random."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0], lengths[1], lengths[-1] = length, 1, 0
    return torch.arange(length)[None, :] < lengths[:, None]


def _qkv(batch: int = 5, tq: int = 7, tk: int = 9, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, t, D, generator=g) for t in (tq, tk, tk))
    return q, k, v, _ragged_mask(batch, tk, g)


class _MhaGraph(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _identity_mha(D)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
        out, weights = self.attn(q, k, v, mask != 0)
        return out, weights[:, 0]  # one head: [B, Tq, Tk], the shape scaled_dot returns


class _ScaledDotGraph(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
        return family.scaled_dot_attention(q, k, v, mask != 0)


def test_one_head_identity_mha_equals_scaled_dot_attention_in_pytorch() -> None:
    q, k, v, real = _qkv()
    with torch.no_grad():
        out, weights = _identity_mha(D)(q, k, v, real)
        expected_out, expected_weights = family.scaled_dot_attention(q, k, v, real)
    torch.testing.assert_close(weights[:, 0], expected_weights, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, expected_out, rtol=1e-6, atol=1e-6)
    # Not trivially equal: a real projection (or a second head) changes the answer.
    two_heads = family.MultiHeadAttention(D, heads=2, score="scaled_dot").eval()
    two_heads.load_state_dict(_identity_mha(D).state_dict())
    with torch.no_grad():
        assert not torch.allclose(two_heads(q, k, v, real)[0], expected_out, atol=1e-3)


def test_one_head_identity_mha_equals_scaled_dot_attention_in_onnx(tmp_path: Path) -> None:
    q, k, v, real = _qkv(batch=4, tq=5, tk=6, seed=1)
    sample = {"q": q, "k": k, "v": v, "mask": real.long()}
    axes = {
        "q": {0: Dim("batch"), 1: Dim("tq")},
        "k": {0: Dim("batch"), 1: Dim("tk")},
        "v": {0: Dim("batch"), 1: Dim("tk")},
        "mask": {0: Dim("batch"), 1: Dim("tk")},
    }
    paths = {"mha": tmp_path / "mha.onnx", "dot": tmp_path / "dot.onnx"}
    export_onnx(_MhaGraph().eval(), sample, ["out", "weights"], axes, paths["mha"])
    export_onnx(_ScaledDotGraph().eval(), sample, ["out", "weights"], axes, paths["dot"])
    # New shapes (not the export's), so nothing matches by specialisation.
    q, k, v, real = _qkv(batch=6, tq=3, tk=11, seed=2)
    feed = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "mask": real.long().numpy()}
    mha = open_session(paths["mha"]).run(None, feed)
    dot = open_session(paths["dot"]).run(None, feed)
    with torch.no_grad():
        reference = family.scaled_dot_attention(q, k, v, real)
    for got_mha, got_dot, want in zip(mha, dot, reference):
        np.testing.assert_allclose(got_mha, got_dot, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_mha, want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("score", family.SCORES)
@pytest.mark.parametrize("heads", [1, 4])
def test_padded_keys_get_exactly_zero_weight(score: str, heads: int) -> None:
    torch.manual_seed(3)
    attn = family.MultiHeadAttention(D, heads, score, additive_dim=8).eval()
    q, k, v, real = _qkv(seed=4)
    with torch.no_grad():
        out, weights = attn(q, k, v, real)
        # Whatever sits in the padded keys and values, the answer is the same.
        k2, v2 = k.clone(), v.clone()
        k2[~real], v2[~real] = 1e4, -1e4
        out2, weights2 = attn(q, k2, v2, real)
    assert weights.shape == (5, heads, 7, 9)
    padded = ~real[:, None, None, :].expand_as(weights)
    assert torch.count_nonzero(weights[padded]) == 0
    has_keys = real.any(dim=1)
    sums = weights.sum(dim=-1)
    torch.testing.assert_close(sums[has_keys], torch.ones_like(sums[has_keys]))
    assert torch.count_nonzero(weights[~has_keys]) == 0  # no real key: no weight anywhere
    assert torch.equal(weights, weights2)
    torch.testing.assert_close(out, out2, rtol=0, atol=0)


@pytest.mark.parametrize("score", family.SCORES)
def test_every_score_in_the_full_classifier_ignores_padding(score: str) -> None:
    config = dataclasses.replace(family.LANGID_MHA, score=score, d_model=32, hash_buckets=64)
    torch.manual_seed(5)
    model = family.build(config).eval()
    ids = torch.randint(4, 260, (1, 12))
    padded = torch.cat([ids, torch.zeros(1, 20, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = model(ids, torch.ones_like(ids))
        with_padding = model(padded, (padded != 0).long())
    for name, short, long in zip(model.output_names, alone, with_padding):
        if name == "attention":
            assert torch.count_nonzero(long[..., 12:]) == 0
            long = long[..., :12]
        elif name == "self_attention":
            assert torch.count_nonzero(long[..., 12:]) == 0  # no query reads a padded key
            long = long[:, :, :12, :12]
        torch.testing.assert_close(short, long, rtol=1e-5, atol=1e-6)


def test_members_differ_only_in_their_attention() -> None:
    models = {name: family.build(c) for name, c in FAMILY.items()}
    encoders = {name: sum(p.numel() for p in m.encoder.parameters()) for name, m in models.items()}
    assert len(set(encoders.values())) == 1
    assert isinstance(models["langid_additive"].pool.attn.v, nn.Parameter)
    assert models["langid_mha"].pool.attn.heads == 4 and len(models["langid_mha"].layers) == 1
    assert models["langid_dot"].output_names == ["embedding", "logits", "attention"]
    assert models["langid_mha"].output_names[-1] == "self_attention"


def test_config_rejects_what_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="score"):
        family.AttentionConfig(score="cosine")
    with pytest.raises(ValueError, match="heads"):
        family.AttentionConfig(heads=3)
    with pytest.raises(ValueError, match="ngram_orders"):
        family.AttentionConfig(ngram_orders=5)
