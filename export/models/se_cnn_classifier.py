"""SE-CNN classifier: convolution stages recalibrated by squeeze-and-excitation.

Paper: Hu, Shen, Sun, "Squeeze-and-Excitation Networks" (CVPR 2018, arXiv:1709.01507). Each
stage ends in an SE block: global average pool ("squeeze"), a bottleneck MLP with reduction r
and a sigmoid ("excitation") giving one weight per channel, which rescales the feature map.
The bottleneck has a floor (``min_hidden``) so narrow early stages are not squeezed to one or
two units. ``attention="cbam"`` swaps in CBAM (Woo et al., ECCV 2018, arXiv:1807.06521):
channel attention from average- and max-pooled descriptors, then a 7x7 spatial attention map.

The head is a global average pool and one linear layer, so the parameter count does not grow
with the image size. Conv and batch norm are kept separate for training and folded at export
(:meth:`ConvBNReLU.fuse_for_inference`).

Served tensors: ``image`` [B, C, H, W] (normalised) in; ``logits`` and ``probabilities``
[B, num_classes] and optionally ``channel_weights`` [B, sum(stage_channels)] (every stage's
channel attention weights, concatenated in stage order) out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


@dataclass(frozen=True)
class SeCnnConfig:
    """Shape of one classifier; the default suits 28x28 digits, ``BENCHMARK`` 128x128 RGB."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    stage_channels: tuple[int, ...] = (32, 64, 128)
    convs_per_stage: int = 2
    reduction: int = 16
    min_hidden: int = 8  # floor for the excitation bottleneck width
    attention: str = "se"  # "se" or "cbam"
    export_channel_weights: bool = True
    # Preprocessing the server applies to an encoded image (pixels scaled to [0, 1] first).
    normalize_mean: tuple[float, ...] = (0.1307,)
    normalize_std: tuple[float, ...] = (0.3081,)
    labels: tuple[str, ...] | None = None  # class names; None -> "0", "1", ...

    def __post_init__(self) -> None:
        if self.attention not in ("se", "cbam"):
            raise ValueError('attention must be "se" or "cbam"')
        if self.in_channels not in (1, 3):
            raise ValueError("in_channels must be 1 (grayscale) or 3 (RGB)")
        if (
            len(self.normalize_mean) != self.in_channels
            or len(self.normalize_std) != self.in_channels
        ):
            raise ValueError("normalize_mean/std need one value per input channel")
        if not self.stage_channels or min(self.stage_channels) < 1:
            raise ValueError("stage_channels must be non-empty and positive")
        if min(self.reduction, self.min_hidden, self.convs_per_stage, self.num_classes) < 1:
            raise ValueError("reduction, min_hidden, convs_per_stage, num_classes must be >= 1")
        if self.image_size < 2 ** (len(self.stage_channels) - 1):
            raise ValueError("image_size too small for the number of pooling stages")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError("labels must have num_classes entries")


BENCHMARK = SeCnnConfig(
    in_channels=3,
    image_size=128,
    num_classes=2,
    stage_channels=(64, 128, 256, 512),
    normalize_mean=(0.485, 0.456, 0.406),
    normalize_std=(0.229, 0.224, 0.225),
)


class ConvBNReLU(nn.Module):
    """3x3 conv, batch norm, ReLU; the batch norm folds into the conv for inference."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))

    def fuse_for_inference(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn_eval(self.conv, self.bn)
            self.bn = nn.Identity()


class SqueezeExcite(nn.Module):
    """SE block: x * sigmoid(MLP(avgpool(x))); returns the rescaled map and the weights."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(channels, hidden)
        self.expand = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        squeezed = x.mean(dim=(2, 3))  # [B, C]
        weights = torch.sigmoid(self.expand(F.relu(self.reduce(squeezed))))  # [B, C]
        return x * weights[:, :, None, None], weights


class Cbam(nn.Module):
    """CBAM: shared-MLP channel attention on avg+max pools, then 7x7 spatial attention."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)
        )
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))  # [B, C]
        weights = torch.sigmoid(pooled)  # [B, C]
        x = x * weights[:, :, None, None]
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(descriptor)), weights  # map: [B, 1, H, W]


class Stage(nn.Module):
    """convs_per_stage ConvBNReLU layers followed by one channel-attention block."""

    def __init__(self, cin: int, cout: int, config: SeCnnConfig) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(ConvBNReLU(cin if i == 0 else cout, cout) for i in range(config.convs_per_stage))
        )
        hidden = max(cout // config.reduction, config.min_hidden)
        self.attend = (
            SqueezeExcite(cout, hidden) if config.attention == "se" else Cbam(cout, hidden)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attend(self.convs(x))


class SeCnnClassifier(nn.Module):
    """image [B, C, H, W] -> logits, probabilities [B, K] (+ channel_weights [B, sum C])."""

    def __init__(self, config: SeCnnConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.in_channels, *config.stage_channels]
        self.stages = nn.ModuleList(
            Stage(cin, cout, config) for cin, cout in itertools.pairwise(widths)
        )
        self.head = nn.Linear(config.stage_channels[-1], config.num_classes)

    @property
    def output_names(self) -> list[str]:
        names = ["logits", "probabilities"]
        return [*names, "channel_weights"] if self.config.export_channel_weights else names

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = image
        all_weights = []
        for index, stage in enumerate(self.stages):
            h, weights = stage(h)  # weights: [B, C_stage]
            all_weights.append(weights)
            if index < len(self.stages) - 1:
                h = F.max_pool2d(h, 2, ceil_mode=True)  # side halves (odd sides round up)
        logits = self.head(h.mean(dim=(2, 3)))  # global average pool -> [B, K]
        probabilities = torch.softmax(logits, dim=-1)
        if self.config.export_channel_weights:
            return logits, probabilities, torch.cat(all_weights, dim=1)
        return logits, probabilities
