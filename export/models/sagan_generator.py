"""SAGAN generator: class-conditional image synthesis with one self-attention block.

Paper: Zhang, Goodfellow, Metaxas, Odena, "Self-Attention Generative Adversarial Networks"
(ICML 2019, arXiv:1805.08318). The attention block follows the form released with SAGAN and
reused by BigGAN (Brock et al. 2018): theta/phi/g 1x1 convolutions with C/8, C/8 and C/2
channels, keys and values max-pooled 2x2 (four times fewer key positions, same quality), a
softmax over key positions, a 1x1 output convolution back to C channels and a learned gate
gamma that starts at 0 so the network first learns local structure and then lets attention in.

The generator is a stack of upsampling residual blocks with class-conditional batch norm
(per-class gain and bias, running statistics at inference). Spectral norm wraps every conv
and linear layer, as in the paper; the exporter bakes the normalised weights and folds the
batch-norm statistics (see :meth:`SaganGenerator.fuse_for_inference`).

Served tensors: ``z`` [B, z_dim] and ``class_label`` [B, 1] in; ``image`` [B, C, H, W] in
[-1, 1] and optionally ``attention`` [B, queries, pooled_keys] out.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class SaganConfig:
    """Shape of one generator; the default is small, ``benchmark`` is BigGAN-128-like."""

    z_dim: int = 128
    num_classes: int = 10
    image_channels: int = 1
    image_size: int = 32
    bottom_width: int = 4  # spatial size after the linear layer
    base_channels: int = 32
    # Channels at each resolution, bottom (bottom_width) to top (image_size), as multiples
    # of base_channels: one entry per resolution, so len == number of upsampling blocks + 1.
    channel_multipliers: tuple[int, ...] = (4, 4, 2, 1)
    attention_resolution: int = 16  # feature-map side at which the attention block sits
    export_attention: bool = True  # serve the attention map as an extra output
    bn_eps: float = 1e-5
    labels: tuple[str, ...] | None = None  # class names; None -> "0", "1", ...

    def __post_init__(self) -> None:
        blocks = math.log2(self.image_size / self.bottom_width)
        if self.image_size % self.bottom_width or blocks != int(blocks) or blocks < 1:
            raise ValueError("image_size must be bottom_width times a power of two (>= 2)")
        if len(self.channel_multipliers) != int(blocks) + 1:
            raise ValueError(
                f"channel_multipliers needs {int(blocks) + 1} entries for "
                f"{self.bottom_width} -> {self.image_size}, got {len(self.channel_multipliers)}"
            )
        if self.attention_resolution not in self.resolutions[1:]:
            raise ValueError(
                f"attention_resolution must be one of the block outputs {self.resolutions[1:]}"
            )
        if self.attention_channels % 8 or self.attention_resolution % 2:
            raise ValueError("attention needs channels divisible by 8 and an even side")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError("labels must have num_classes entries")
        if min(self.z_dim, self.num_classes, self.image_channels, self.base_channels) < 1:
            raise ValueError("sizes must be positive")

    @property
    def resolutions(self) -> list[int]:
        return [self.bottom_width * 2**i for i in range(len(self.channel_multipliers))]

    @property
    def attention_channels(self) -> int:
        index = self.resolutions.index(self.attention_resolution)
        return self.base_channels * self.channel_multipliers[index]

    @property
    def attention_shape(self) -> tuple[int, int]:
        """(queries, pooled keys) of the served attention map."""
        queries = self.attention_resolution**2
        return queries, queries // 4


BENCHMARK = SaganConfig(
    image_channels=3,
    image_size=128,
    base_channels=64,
    channel_multipliers=(16, 16, 8, 4, 2, 1),
    attention_resolution=64,
)


def sn_conv(cin: int, cout: int, kernel: int) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, kernel, padding=kernel // 2))


class SelfAttention(nn.Module):
    """SAGAN self-attention over feature-map positions, keys/values pooled 2x2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = spectral_norm(nn.Conv2d(channels, channels // 8, 1, bias=False))
        self.phi = spectral_norm(nn.Conv2d(channels, channels // 8, 1, bias=False))
        self.g = spectral_norm(nn.Conv2d(channels, channels // 2, 1, bias=False))
        self.out = spectral_norm(nn.Conv2d(channels // 2, channels, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))  # gate: the block starts as the identity

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        theta = self.theta(x).flatten(2)  # [B, C/8, HW]
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # [B, C/8, HW/4]
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # [B, C/2, HW/4]
        attention = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # [B, HW, HW/4]
        o = (g @ attention.transpose(1, 2)).reshape(b, c // 2, h, w)  # [B, C/2, H, W]
        return x + self.gamma * self.out(o), attention


class ConditionalBatchNorm(nn.Module):
    """Batch norm without its own affine; a per-class gain and bias replace it."""

    def __init__(self, channels: int, num_classes: int, eps: float) -> None:
        super().__init__()
        self.bn: nn.Module = nn.BatchNorm2d(channels, affine=False, eps=eps)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        gain = self.gain(label)[:, :, None, None]  # [B, C, 1, 1]
        bias = self.bias(label)[:, :, None, None]
        return self.bn(x) * gain + bias

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Fold the running statistics into every class's gain and bias (eval only)."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        scale = torch.rsqrt(self.bn.running_var + self.bn.eps)  # [C]
        self.bias.weight -= self.gain.weight * scale * self.bn.running_mean
        self.gain.weight *= scale
        self.bn = nn.Identity()


class UpBlock(nn.Module):
    """BigGAN-style residual block: CBN-ReLU-up-conv3-CBN-ReLU-conv3, shortcut up-conv1."""

    def __init__(self, cin: int, cout: int, num_classes: int, eps: float) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm(cin, num_classes, eps)
        self.conv1 = sn_conv(cin, cout, 3)
        self.bn2 = ConditionalBatchNorm(cout, num_classes, eps)
        self.conv2 = sn_conv(cout, cout, 3)
        self.shortcut = sn_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, label)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), label)))  # [B, cout, 2H, 2W]
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ChannelAffine(nn.Module):
    """Per-channel scale and shift: what an eval-mode batch norm folds into."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale[None, :, None, None].clone())
        self.shift = nn.Parameter(shift[None, :, None, None].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class SaganGenerator(nn.Module):
    """z [B, z_dim] + class_label [B, 1] -> image [B, C, H, W] in [-1, 1] (+ attention)."""

    def __init__(self, config: SaganConfig) -> None:
        super().__init__()
        self.config = config
        chans = [config.base_channels * m for m in config.channel_multipliers]
        self.linear = spectral_norm(nn.Linear(config.z_dim, chans[0] * config.bottom_width**2))
        self.blocks = nn.ModuleList(
            UpBlock(cin, cout, config.num_classes, config.bn_eps)
            for cin, cout in itertools.pairwise(chans)
        )
        self.attention_after = config.resolutions[1:].index(config.attention_resolution)
        self.attention = SelfAttention(config.attention_channels)
        self.out_bn: nn.Module = nn.BatchNorm2d(chans[-1], eps=config.bn_eps)
        self.out_conv = sn_conv(chans[-1], config.image_channels, 3)

    @property
    def output_names(self) -> list[str]:
        return ["image", "attention"] if self.config.export_attention else ["image"]

    def forward(self, z: torch.Tensor, class_label: torch.Tensor) -> tuple[torch.Tensor, ...]:
        label = class_label.reshape(-1)  # [B, 1] -> [B]
        side = self.config.bottom_width
        h = self.linear(z).reshape(z.shape[0], -1, side, side)  # [B, C0, 4, 4]
        attention = None
        for index, block in enumerate(self.blocks):
            h = block(h, label)  # side doubles each block
            if index == self.attention_after:
                h, attention = self.attention(h)  # attention: [B, HW, HW/4]
        image = torch.tanh(self.out_conv(F.relu(self.out_bn(h))))  # [B, C, H, W]
        if self.config.export_attention:
            return image, attention
        return (image,)

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Replace the output batch norm by the affine map its running statistics define."""
        if isinstance(self.out_bn, nn.BatchNorm2d):
            bn = self.out_bn
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            self.out_bn = ChannelAffine(scale, bn.bias - scale * bn.running_mean)
