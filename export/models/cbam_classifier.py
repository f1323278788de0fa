"""CBAM classifier: every convolution stage refined by channel, then spatial attention.

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module" (ECCV 2018,
arXiv:1807.06521). After each stage's convolutions:

- channel attention: the feature map is average-pooled and max-pooled over space, both
  descriptors go through one shared MLP (bottleneck ``C / reduction``, floored at
  ``min_hidden``), the two results are summed and squashed, ``M_c = sigmoid(MLP(avg) +
  MLP(max))`` [B, C], and the map is rescaled channel by channel;
- spatial attention: the channel-refined map is pooled over channels (mean and max, two
  planes), a 7x7 convolution turns them into one plane, ``M_s = sigmoid(conv7x7([mean; max]))``
  [B, 1, H, W], and the map is rescaled position by position.

The convolutions, pooling and head are the SE-CNN's (:mod:`export.models.se_cnn_classifier`:
two 3x3 conv + batch norm + ReLU per stage, 2x2 max pool between stages, global average pool,
one linear layer), so the two models differ only in the attention block.

Served tensors: ``image`` [B, C, H, W] (normalised) in; ``logits`` and ``probabilities``
[B, num_classes], ``channel_weights`` [B, sum(stage_channels)] (every stage's M_c,
concatenated in stage order) and one ``spatial_attention_<i>`` [B, H_i, W_i] per stage (its
M_s, in [0, 1]; 28x28, 14x14, 7x7 for the default digits) out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export.models.se_cnn_classifier import ConvBNReLU


@dataclass(frozen=True)
class CbamConfig:
    """Shape of one CBAM classifier; the default suits 28x28 digits."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    stage_channels: tuple[int, ...] = (32, 64, 128)
    convs_per_stage: int = 2
    reduction: int = 16
    min_hidden: int = 8  # floor for the channel MLP's bottleneck
    spatial_kernel: int = 7  # the paper's choice (7x7 beat 3x3 in its ablation)
    normalize_mean: tuple[float, ...] = (0.1307,)
    normalize_std: tuple[float, ...] = (0.3081,)
    labels: tuple[str, ...] | None = None  # class names; None -> "0", "1", ...

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError("in_channels must be 1 (grayscale) or 3 (RGB)")
        if len(self.normalize_mean) != self.in_channels or len(self.normalize_std) != self.in_channels:
            raise ValueError("normalize_mean/std need one value per input channel")
        if not self.stage_channels or min(self.stage_channels) < 1:
            raise ValueError("stage_channels must be non-empty and positive")
        if min(self.reduction, self.min_hidden, self.convs_per_stage, self.num_classes) < 1:
            raise ValueError("reduction, min_hidden, convs_per_stage, num_classes must be >= 1")
        if self.spatial_kernel < 1 or self.spatial_kernel % 2 == 0:
            raise ValueError("spatial_kernel must be odd and positive (the map keeps its size)")
        if self.image_size < 2 ** (len(self.stage_channels) - 1):
            raise ValueError("image_size too small for the number of pooling stages")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError("labels must have num_classes entries")

    @property
    def map_sides(self) -> tuple[int, ...]:
        """Side of each stage's spatial attention map (2x2 pooling, odd sides round up)."""
        sides = [self.image_size]
        for _ in self.stage_channels[1:]:
            sides.append(-(-sides[-1] // 2))
        return tuple(sides)


class ChannelAttention(nn.Module):
    """M_c = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))), one shared MLP."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))  # [B, C]


class SpatialAttention(nn.Module):
    """M_s = sigmoid(conv_kxk([mean_c(x); max_c(x)])), one plane per image."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        planes = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(planes))  # [B, 1, H, W]


class CbamStage(nn.Module):
    """convs_per_stage ConvBNReLU layers, then channel and spatial attention in sequence."""

    def __init__(self, cin: int, cout: int, config: CbamConfig) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(ConvBNReLU(cin if i == 0 else cout, cout) for i in range(config.convs_per_stage))
        )
        self.channel = ChannelAttention(cout, max(cout // config.reduction, config.min_hidden))
        self.spatial = SpatialAttention(config.spatial_kernel)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.convs(x)
        channel = self.channel(x)  # [B, C]
        x = x * channel[:, :, None, None]
        spatial = self.spatial(x)  # [B, 1, H, W]
        return x * spatial, channel, spatial[:, 0]


class CbamClassifier(nn.Module):
    """image [B, C, H, W] -> logits, probabilities [B, K], channel_weights [B, sum C],
    spatial_attention_<i> [B, H_i, W_i] per stage."""

    def __init__(self, config: CbamConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.in_channels, *config.stage_channels]
        self.stages = nn.ModuleList(CbamStage(cin, cout, config) for cin, cout in itertools.pairwise(widths))
        self.head = nn.Linear(config.stage_channels[-1], config.num_classes)

    @property
    def output_names(self) -> list[str]:
        maps = [f"spatial_attention_{i}" for i in range(len(self.stages))]
        return ["logits", "probabilities", "channel_weights", *maps]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = image
        channels, maps = [], []
        for index, stage in enumerate(self.stages):
            h, channel, spatial = stage(h)
            channels.append(channel)
            maps.append(spatial)
            if index < len(self.stages) - 1:
                h = F.max_pool2d(h, 2, ceil_mode=True)
        logits = self.head(h.mean(dim=(2, 3)))  # global average pool -> [B, K]
        return logits, torch.softmax(logits, dim=-1), torch.cat(channels, dim=1), *maps
