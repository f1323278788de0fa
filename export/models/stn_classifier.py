"""Spatial transformer classifier: a learnt affine crop in front of a small CNN.

Paper: Jaderberg, Simonyan, Zisserman, Kavukcuoglu, "Spatial Transformer Networks" (NeurIPS
2015, arXiv:1506.02025). A localisation network looks at the whole input and predicts the six
parameters of an affine map ``theta`` [2, 3]; ``affine_grid`` turns it into one sampling point
per output pixel and ``grid_sample`` (bilinear) reads the input there. The result, the
rectified image, is what the classifier sees. The last localisation layer starts at zero
weight and identity bias, so training begins from "the whole input, unchanged" and the crop
is learnt from the classification loss alone (no box labels).

Inputs are a larger canvas than the classifier's (40x40 in, 24x24 rectified by default), so
the transformer can zoom into a digit that was shrunk, rotated or moved on the canvas; with
``transformer=False`` theta stays the identity and the same CNN sees the whole canvas resampled
to 24x24 (the "no-STN twin" the training run measures against).

Sampling happens in normalised units, but its zero padding must mean background: the image is
shifted so that black is 0 before sampling and back after (``background`` below).

Served tensors: ``image`` [B, 1, 40, 40] (normalised) in; ``logits`` and ``probabilities``
[B, num_classes], ``theta`` [B, 2, 3] (torch affine_grid convention, align_corners=False: maps
rectified-image coordinates in [-1, 1] to input coordinates) and ``rectified_image``
[B, 1, 24, 24] (normalised like the input) out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from export.models.se_cnn_classifier import ConvBNReLU

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class StnConfig:
    """Shape of one STN classifier; the default reads 40x40 distorted digits."""

    in_channels: int = 1
    image_size: int = 40  # the input canvas
    rectified_size: int = 24  # what the transformer samples and the CNN classifies
    num_classes: int = 10
    stage_channels: tuple[int, ...] = (16, 32, 64)  # the CNN after the transformer
    convs_per_stage: int = 2
    localisation_channels: tuple[int, int] = (8, 16)
    localisation_hidden: int = 32
    transformer: bool = True  # False: theta fixed at the identity (the no-STN twin)
    normalize_mean: tuple[float, ...] = (0.1307,)
    normalize_std: tuple[float, ...] = (0.3081,)
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError("in_channels must be 1 (grayscale) or 3 (RGB)")
        if len(self.normalize_mean) != self.in_channels or len(self.normalize_std) != self.in_channels:
            raise ValueError("normalize_mean/std need one value per input channel")
        if self.image_size < 8 or self.rectified_size < 2 ** (len(self.stage_channels) - 1):
            raise ValueError("image_size must be >= 8 and rectified_size fit the CNN's pooling stages")
        if not self.stage_channels or min(self.stage_channels) < 1 or min(self.localisation_channels) < 1:
            raise ValueError("channel counts must be positive")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError("labels must have num_classes entries")


class Localisation(nn.Module):
    """The input canvas -> theta [B, 2, 3]; starts as the identity for every input."""

    def __init__(self, config: StnConfig) -> None:
        super().__init__()
        c1, c2 = config.localisation_channels
        self.features = nn.Sequential(
            nn.AvgPool2d(2, ceil_mode=True),  # the crop needs the layout, not the strokes
            nn.Conv2d(config.in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )
        self.regress = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 16, config.localisation_hidden), nn.ReLU(),
            nn.Linear(config.localisation_hidden, 6),
        )
        last = self.regress[-1]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor(IDENTITY))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.regress(self.features(image)).view(-1, 2, 3)


class StnClassifier(nn.Module):
    """image [B, C, S, S] -> logits, probabilities [B, K], theta [B, 2, 3], rectified [B, C, R, R]."""

    def __init__(self, config: StnConfig) -> None:
        super().__init__()
        self.config = config
        self.localisation = Localisation(config)
        widths = [config.in_channels, *config.stage_channels]
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvBNReLU(cin if i == 0 else cout, cout) for i in range(config.convs_per_stage)))
            for cin, cout in itertools.pairwise(widths)
        )
        self.head = nn.Linear(config.stage_channels[-1], config.num_classes)
        mean = torch.tensor(config.normalize_mean).reshape(1, -1, 1, 1)
        std = torch.tensor(config.normalize_std).reshape(1, -1, 1, 1)
        self.register_buffer("background", -mean / std, persistent=False)  # black, normalised
        self.register_buffer("identity", torch.tensor(IDENTITY).view(1, 2, 3), persistent=False)

    @property
    def output_names(self) -> list[str]:
        return ["logits", "probabilities", "theta", "rectified_image"]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.config.transformer:
            theta = self.localisation(image)  # [B, 2, 3]
        else:
            theta = self.identity.expand(image.shape[0], 2, 3) + 0.0 * image.mean()  # keeps the batch dim symbolic
        side = self.config.rectified_size
        grid = F.affine_grid(theta, [image.shape[0], image.shape[1], side, side], align_corners=False)
        shifted = image - self.background
        rectified = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        rectified = rectified + self.background  # [B, C, R, R]
        h = rectified
        for index, stage in enumerate(self.stages):
            h = stage(h)
            if index < len(self.stages) - 1:
                h = F.max_pool2d(h, 2, ceil_mode=True)
        logits = self.head(h.mean(dim=(2, 3)))
        return logits, torch.softmax(logits, dim=-1), theta, rectified
