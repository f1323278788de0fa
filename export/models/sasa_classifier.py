"""Stand-alone self-attention classifier: local k x k multi-head attention instead of convs.

Paper: Ramachandran, Parmar, Vaswani, Bello, Levskaya, Shlens, "Stand-Alone Self-Attention in
Vision Models" (NeurIPS 2019, arXiv:1906.05909). Every spatial convolution after the stem is
replaced by local self-attention: the query at pixel (i, j) attends to the k x k window of
keys around it, per head,

    y_ij = sum_{a,b in N_k(i,j)} softmax_ab(q_ij^T k_ab + q_ij^T r_{a-i,b-j}) v_ab,

with relative position embeddings: the row offset a - i and the column offset b - j each have
a learnt embedding of half the head width, concatenated into r_{a-i,b-j} (shared by the
heads). Queries, keys and values are 1x1 projections. Positions of the window outside the
feature map are masked out (weight 0), so each window's weights sum to 1 over real pixels.

Layout, following the paper's "convolutional stem, attention everywhere else": a 3x3 conv stem
at full resolution, 2x2 max pool, a stage of attention blocks, a pointwise (1x1) widening and
2x2 max pool, a second stage of attention blocks, global average pool and a linear head. A
block is ``relu(x + BN(proj(attention(x))))``; its batch norm follows a 1x1 conv and folds
into it for inference.

The window is gathered with k*k shifted slices of the padded map (no unfold), which exports
to plain ONNX Slice/Concat and runs at any batch size.

Served tensors: ``image`` [B, 1, 28, 28] (normalised) in; ``logits`` and ``probabilities``
[B, num_classes] and ``window_attention`` [B, heads, H, W, k, k] (every query's window
weights in the last block of the first stage; 4 x 14 x 14 x 5 x 5 by default) out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from export.models.se_cnn_classifier import ConvBNReLU


@dataclass(frozen=True)
class SasaConfig:
    """Shape of one SASA classifier; the default suits 28x28 digits."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    stem_channels: int = 32
    stage_channels: tuple[int, int] = (32, 64)
    stage_heads: tuple[int, int] = (4, 8)
    blocks_per_stage: tuple[int, int] = (1, 2)
    window: int = 5  # k (the paper's is 7; 5 keeps training within 20 minutes on 2 cores)
    normalize_mean: tuple[float, ...] = (0.1307,)
    normalize_std: tuple[float, ...] = (0.3081,)
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError("in_channels must be 1 (grayscale) or 3 (RGB)")
        if len(self.normalize_mean) != self.in_channels or len(self.normalize_std) != self.in_channels:
            raise ValueError("normalize_mean/std need one value per input channel")
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError("window must be odd and positive (centred on the query)")
        for channels, heads in zip(self.stage_channels, self.stage_heads, strict=True):
            if heads < 1 or channels % heads or (channels // heads) % 2:
                raise ValueError("stage channels must split into heads of even width (row and column halves)")
        if min(self.blocks_per_stage) < 1 or len(self.blocks_per_stage) != 2 or self.image_size < 4:
            raise ValueError("blocks_per_stage needs two counts >= 1 and image_size >= 4")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError("labels must have num_classes entries")

    @property
    def stage_sides(self) -> tuple[int, int]:
        first = -(-self.image_size // 2)
        return first, -(-first // 2)


class LocalSelfAttention(nn.Module):
    """Multi-head attention over each position's k x k window, relative positions as q^T r."""

    def __init__(self, channels: int, heads: int, window: int, side: int) -> None:
        super().__init__()
        self.heads, self.window, self.side = heads, window, side
        self.head_dim = channels // heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        half = self.head_dim // 2
        self.rel_rows = nn.Parameter(torch.randn(window, half) * half**-0.5)  # offset a - i
        self.rel_cols = nn.Parameter(torch.randn(window, half) * half**-0.5)  # offset b - j
        pad = window // 2
        inside = F.pad(torch.ones(1, 1, side, side), (pad, pad, pad, pad))
        valid = torch.stack([inside[0, 0, dy:dy + side, dx:dx + side] for dy in range(window) for dx in range(window)])
        self.register_buffer("valid", valid.bool(), persistent=False)  # [k*k, H, W]

    def _shifted(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, heads, head_dim, H, W] -> k*k maps, row-major over the window: map o holds, at
        each position, the neighbour at window offset o (zeros past the border)."""
        k, s, pad = self.window, self.side, self.window // 2
        padded = F.pad(x, (pad, pad, pad, pad))
        return [padded[..., dy:dy + s, dx:dx + s] for dy in range(k) for dx in range(k)]

    def relative(self) -> torch.Tensor:
        """r_{a-i,b-j} for every window position, row-major: [k*k, head_dim]."""
        k = self.window
        rows = self.rel_rows[:, None, :].expand(k, k, -1)
        cols = self.rel_cols[None, :, :].expand(k, k, -1)
        return torch.cat([rows, cols], dim=-1).reshape(k * k, self.head_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, s = x.shape[0], x.shape[1], self.side
        split = (b, self.heads, self.head_dim, s, s)
        q, k, v = (t.reshape(split) for t in self.qkv(x).chunk(3, dim=1))
        q = q * self.head_dim**-0.5
        # One offset at a time: never a [B, C, k*k, H, W] tensor (k*k times the feature map).
        content = torch.stack([(q * key).sum(dim=2) for key in self._shifted(k)], dim=2)  # q^T k
        position = torch.matmul(self.relative(), q.flatten(3)).view(b, self.heads, -1, s, s)  # q^T r
        logits = (content + position).masked_fill(~self.valid, float("-inf"))  # centre always valid
        weights = torch.softmax(logits, dim=2)  # [B, heads, k*k, H, W]
        out = sum(weights[:, :, o, None] * value for o, value in enumerate(self._shifted(v)))
        return out.reshape(b, c, s, s), weights


class AttentionBlock(nn.Module):
    """relu(x + BN(proj(attention(x)))): a residual block with attention in place of the 3x3 conv."""

    def __init__(self, channels: int, heads: int, window: int, side: int) -> None:
        super().__init__()
        self.attention = LocalSelfAttention(channels, heads, window, side)
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, weights = self.attention(x)
        return F.relu(x + self.bn(self.proj(y))), weights

    def fuse_for_inference(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.proj = fuse_conv_bn_eval(self.proj, self.bn)
            self.bn = nn.Identity()


class Pointwise(nn.Module):
    """1x1 conv, batch norm, ReLU (channel widening between stages; no spatial mixing)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))

    def fuse_for_inference(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn_eval(self.conv, self.bn)
            self.bn = nn.Identity()


class SasaClassifier(nn.Module):
    """image [B, C, H, W] -> logits, probabilities [B, K], window_attention [B, heads, H1, W1, k, k]."""

    def __init__(self, config: SasaConfig) -> None:
        super().__init__()
        self.config = config
        (c1, c2), (h1, h2), (s1, s2) = config.stage_channels, config.stage_heads, config.stage_sides
        (n1, n2), k = config.blocks_per_stage, config.window
        self.stem = ConvBNReLU(config.in_channels, config.stem_channels)
        self.enter = Pointwise(config.stem_channels, c1) if config.stem_channels != c1 else nn.Identity()
        self.stage1 = nn.ModuleList(AttentionBlock(c1, h1, k, s1) for _ in range(n1))
        self.widen = Pointwise(c1, c2)
        self.stage2 = nn.ModuleList(AttentionBlock(c2, h2, k, s2) for _ in range(n2))
        self.head = nn.Linear(c2, config.num_classes)

    @property
    def output_names(self) -> list[str]:
        return ["logits", "probabilities", "window_attention"]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.enter(F.max_pool2d(self.stem(image), 2, ceil_mode=True))
        shown = None
        for block in self.stage1:
            h, shown = block(h)
        h = F.max_pool2d(self.widen(h), 2, ceil_mode=True)
        for block in self.stage2:
            h, _ = block(h)
        logits = self.head(h.mean(dim=(2, 3)))
        assert shown is not None
        b, heads, _, s, _ = shown.shape
        k = self.config.window
        window = shown.permute(0, 1, 3, 4, 2).reshape(b, heads, s, s, k, k)  # [B, heads, H, W, k, k]
        return logits, torch.softmax(logits, dim=-1), window
