"""The SAGAN discriminator: training-only, never exported.

Residual downsampling blocks (BigGAN's D blocks), the same self-attention block as the
generator at 16x16, spectral norm on every layer (Miyato et al. 2018, as SAGAN uses in both
networks) and a projection head (Miyato & Koyama, "cGANs with Projection Discriminator",
ICLR 2018): ``D(x, y) = linear(h) + <embed(y), h>`` with ``h`` the sum-pooled features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from export.models.sagan_generator import SelfAttention, sn_conv


class DownBlock(nn.Module):
    """ReLU-conv3-ReLU-conv3(-avgpool) with a conv1(-avgpool) shortcut.

    The first block skips the leading ReLU (its input is the image) and pools the shortcut
    before its 1x1 conv, as BigGAN's "optimised" first block does.
    """

    def __init__(self, cin: int, cout: int, downsample: bool, first: bool = False) -> None:
        super().__init__()
        self.conv1 = sn_conv(cin, cout, 3)
        self.conv2 = sn_conv(cout, cout, 3)
        self.shortcut = sn_conv(cin, cout, 1) if cin != cout or downsample else nn.Identity()
        self.downsample = downsample
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)  # [B, cout, H/2, W/2]
        if self.first and self.downsample:
            return h + self.shortcut(F.avg_pool2d(x, 2))
        s = self.shortcut(x)
        return h + (F.avg_pool2d(s, 2) if self.downsample else s)


class ProjectionDiscriminator(nn.Module):
    """image [B, C, 32, 32] in [-1, 1], label [B] -> realness score [B]."""

    def __init__(
        self,
        image_channels: int = 1,
        base_channels: int = 32,
        num_classes: int = 10,
        attention: bool = True,
    ) -> None:
        super().__init__()
        c = base_channels
        self.block1 = DownBlock(image_channels, c, downsample=True, first=True)  # 32 -> 16
        self.attention = SelfAttention(c) if attention else None  # at 16x16, as in G
        self.blocks = nn.Sequential(
            DownBlock(c, 2 * c, downsample=True),  # 16 -> 8
            DownBlock(2 * c, 4 * c, downsample=True),  # 8 -> 4
            DownBlock(4 * c, 4 * c, downsample=False),
        )
        self.linear = spectral_norm(nn.Linear(4 * c, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, 4 * c))

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.block1(image)
        if self.attention is not None:
            h, _ = self.attention(h)
        h = F.relu(self.blocks(h)).sum(dim=(2, 3))  # [B, 4c]
        projection = (self.embed(label) * h).sum(dim=1)  # [B]
        return self.linear(h).squeeze(1) + projection
