"""Judging a digit generator with the trained SE-CNN.

- "classified as requested": seeded latents, ten digits in equal numbers, the SE-CNN's
  argmax compared with the requested digit;
- a Fréchet distance (FID's formula) on the SE-CNN's penultimate features — the 128-d
  global-average-pooled input of its linear head — against real held-out digits;
- a 10x10 sample grid, one row per digit, the same ten latents in every row.

Generated 32x32 images in [-1, 1] are cropped to the centre 28x28 and mapped to [0, 1], then
normalised exactly as the classifier was trained (:mod:`export.train.digits`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.models.se_cnn_classifier import SeCnnClassifier
from export.train import digits, plots

EVAL_SEED = 31337  # the latents every evaluation (and tests/train) uses
GRID_SEED = 2718


def latents(count: int, z_dim: int, seed: int = EVAL_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` seeded (z [N, z_dim], class_label [N, 1]) pairs, digits 0-9 in turn."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(count, z_dim, generator=generator)
    labels = (torch.arange(count) % 10).reshape(-1, 1)
    return z, labels


@torch.no_grad()
def generate(
    generator: nn.Module, z: torch.Tensor, labels: torch.Tensor, batch: int = 250
) -> torch.Tensor:
    """[N, 1, 28, 28] in [0, 1]: the generator's images, ready for the classifier."""
    generator.eval()
    parts = [
        digits.from_generator_space(generator(z[i : i + batch], labels[i : i + batch])[0])
        for i in range(0, len(z), batch)
    ]
    return torch.cat(parts)


@torch.no_grad()
def classify_and_embed(
    classifier: SeCnnClassifier, images: torch.Tensor, batch: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted digit [N], penultimate features [N, 128]) for [0, 1] images."""
    classifier.eval()
    captured: list[torch.Tensor] = []
    # The head's input is the pooled feature vector; a hook reads it without re-implementing
    # the classifier's forward pass.
    hook = classifier.head.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    try:
        logits = [
            classifier(digits.normalize(images[i : i + batch]))[0]
            for i in range(0, len(images), batch)
        ]
    finally:
        hook.remove()
    return torch.cat(logits).argmax(dim=1), torch.cat(captured)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) for feature rows ``a`` and ``b``.

    Tr((S_a S_b)^1/2) is computed as the sum of square roots of the eigenvalues of the
    symmetric S_a^1/2 S_b S_a^1/2 (same spectrum), which needs only ``eigh``.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0.0))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(middle.clip(min=0.0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def judge(
    generator: nn.Module, classifier: SeCnnClassifier, count: int, z_dim: int
) -> tuple[dict[str, Any], np.ndarray]:
    """(accuracy overall and per digit, features of the samples)."""
    z, labels = latents(count, z_dim)
    predicted, features = classify_and_embed(classifier, generate(generator, z, labels))
    requested = labels.reshape(-1)
    hit = predicted == requested
    per_class = {str(d): round(hit[requested == d].float().mean().item(), 4) for d in range(10)}
    return {"accuracy": round(hit.float().mean().item(), 4), "per_class": per_class}, (
        features.numpy()
    )


def evaluate(
    generator: nn.Module,
    untrained: nn.Module,
    classifier: SeCnnClassifier,
    split: digits.DigitSplit,
    z_dim: int,
    count: int = 1000,
) -> dict[str, Any]:
    """Everything the model card reports about a generator."""
    trained, fake = judge(generator, classifier, count, z_dim)
    baseline, fake_untrained = judge(untrained, classifier, count, z_dim)
    _, real = classify_and_embed(classifier, split.test_images)
    rng = np.random.default_rng(EVAL_SEED)
    train_rows = torch.from_numpy(rng.choice(len(split.train_images), len(real), replace=False))
    _, real_train = classify_and_embed(classifier, split.train_images[train_rows])
    real_np = real.numpy()
    return {
        "samples": count,
        "classified_as_requested": trained["accuracy"],
        "per_class": trained["per_class"],
        "classified_as_requested_untrained": baseline["accuracy"],
        "fid_reference": f"{len(real_np):,} held-out real digits",
        "fid": round(frechet_distance(fake, real_np), 3),
        "fid_untrained": round(frechet_distance(fake_untrained, real_np), 3),
        "fid_real_vs_real": round(frechet_distance(real_train.numpy(), real_np), 3),
    }


def sample_grid(generator: nn.Module, z_dim: int, path: Path) -> None:
    """``path``: 10x10 PNG, row d = digit d, column j = latent j (shared across rows)."""
    z = torch.randn(10, z_dim, generator=torch.Generator().manual_seed(GRID_SEED))
    z = z.repeat(10, 1)  # [100, z_dim]: latent j in column j of every row
    labels = torch.arange(10).repeat_interleave(10).reshape(-1, 1)
    generator.eval()
    with torch.no_grad():
        served = generator(z, labels)[0]  # [100, 1, 32, 32] in [-1, 1]: what the server sends
    side = served.shape[-1]
    images = ((served + 1.0) / 2.0).clamp(0.0, 1.0).reshape(10, 10, side, side).numpy()
    plots.image_grid(images, path, [str(d) for d in range(10)])
