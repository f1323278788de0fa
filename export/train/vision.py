"""What the three vision-attention classifiers' training runs share (CBAM, STN, SASA).

The recipe is the SE-CNN's (:mod:`export.train.se_cnn`): AdamW, one-cycle learning rate,
label smoothing, a fresh random augmentation of every batch on [0, 1] pixels, then exactly the
served normalisation. The held-out images are looked at once, after the last epoch.

Each run also measures, in the same process, what the model card puts beside the SE-CNN:
ONNX Runtime CPU latency at batch 1 and 32 of the exported graph (one intra-op thread, so the
figure does not depend on what else the shared machine runs), and the parameter count.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from export.train import common

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
LATENCY_BATCHES = (1, 32)


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule of one run (recorded in the metrics file)."""

    epochs: int
    batch_size: int = 128
    max_lr: float = 4e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.2
    checkpoint_every: int = 2  # epochs
    precision: str = "auto"  # auto: bf16 autocast where the CPU has bf16 hardware


def normalize(images: torch.Tensor, config: Any) -> torch.Tensor:
    """[0, 1] pixels -> the served preprocess ``(x - mean) / std`` of ``config``."""
    mean = torch.tensor(config.normalize_mean).reshape(1, -1, 1, 1)
    std = torch.tensor(config.normalize_std).reshape(1, -1, 1, 1)
    return (images - mean) / std


def fit(  # noqa: PLR0913 (the recipe's parts, all keyword-only)
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    *,
    seed: int,
    augment: Augment,
    config: Any,
    checkpoints: common.Checkpointer,
    resume: bool = False,
    lr_scales: dict[str, float] | None = None,
) -> float:
    """Train ``model`` on [0, 1] ``images``; returns the wall seconds of this call.

    ``lr_scales`` maps a parameter-name prefix to a factor on ``max_lr`` for those parameters
    (the STN's localisation net learns slower than the classifier, as in the paper).
    """
    precision = common.resolve_precision(recipe.precision)
    steps_per_epoch = -(-len(images) // recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    groups: dict[float, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        scale = next((f for prefix, f in (lr_scales or {}).items() if name.startswith(prefix)), 1.0)
        groups.setdefault(scale, []).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": recipe.max_lr * scale} for scale, params in groups.items()],
        weight_decay=recipe.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, [recipe.max_lr * scale for scale in groups], total_steps=total, pct_start=recipe.warmup_fraction
    )
    clock = Clock()
    state = {"model": model, "optimizer": optimizer, "schedule": schedule, "clock": clock}
    start_epoch = checkpoints.load(state) if resume else 0
    started = time.perf_counter() - clock.seconds  # a resumed run counts its earlier epochs
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc=checkpoints.name, file=sys.stderr)
    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        # One generator per epoch: a resumed run draws the same batches and augmentations.
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images), recipe.batch_size):
            rows = order[i : i + recipe.batch_size]
            batch = augment(images[rows], generator)
            with common.autocast(precision):
                logits = model(normalize(batch, config))[0]
            loss = F.cross_entropy(logits.float(), labels[rows], label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            bar.update(1)
        if (epoch + 1) % recipe.checkpoint_every == 0 or epoch + 1 == recipe.epochs:
            clock.seconds = time.perf_counter() - started
            checkpoints.save(epoch + 1, state)
    bar.close()
    model.eval()
    return time.perf_counter() - started


class Clock:
    """Training seconds so far, kept in the checkpoint like the optimiser's state."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.seconds = float(state.get("seconds", 0.0))


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: Any) -> dict[str, Any]:
    """Accuracy, errors, per-digit accuracy and confusion matrix on [0, 1] ``images``
    (output 0 of the model is its logits)."""
    predicted = common.predict_batches(model, normalize(images, config)).argmax(dim=1)
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(dim=1).clamp(min=1)).tolist()
    return {
        "accuracy": round((predicted == labels).float().mean().item(), 4),
        "errors": int((predicted != labels).sum()),
        "per_class_accuracy": {str(d): round(a, 4) for d, a in enumerate(per_class)},
        "confusion_matrix": confusion.tolist(),  # rows: true digit, columns: predicted
    }


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def onnx_latency(spec: Any, model: nn.Module, config: Any, repeats: int = 30) -> dict[str, float]:
    """Median ms of one ONNX Runtime CPU run (1 intra-op thread) of ``model`` exported as
    the server would get it (``spec``: its export.specs.ModelSpec), at each of
    :data:`LATENCY_BATCHES`."""
    import onnxruntime as ort

    from export.pipeline import export_model

    with tempfile.TemporaryDirectory(prefix=f"attnserve-latency-{spec.name}-") as scratch:
        result = export_model(spec, config, model, Path(scratch), max(LATENCY_BATCHES))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(result.model_dir / "1" / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
    figures = {}
    generator = torch.Generator().manual_seed(0)
    for batch in LATENCY_BATCHES:
        feed = {k: v.numpy() for k, v in spec.sample(config, batch, generator).items()}
        for _ in range(3):
            session.run(None, feed)  # warm-up: first runs allocate
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        figures[f"batch_{batch}_ms"] = round(statistics.median(times) * 1000, 3)
    return figures


def se_cnn_reference(split: Any, images: torch.Tensor | None = None) -> dict[str, Any]:
    """The shipped SE-CNN, measured in this run beside the new model: held-out accuracy,
    parameters, ONNX latency, and its own recorded training time.

    ``images``: other held-out images of the split's digits (the STN's distorted canvases),
    resized to the SE-CNN's 28x28 as the server's preprocess would resize a bigger picture.
    """
    import json

    from export.models.se_cnn_classifier import SeCnnClassifier, SeCnnConfig
    from export.specs import SeCnnSpec
    from export.weights import SHIPPED_DIR, load_checkpoint

    config = SeCnnConfig()
    model = SeCnnClassifier(config)
    load_checkpoint(model, SHIPPED_DIR / "se_cnn_classifier.safetensors")
    recorded = json.loads((SHIPPED_DIR / "se_cnn_classifier.metrics.json").read_text())
    if images is None:
        images = split.test_images
    elif images.shape[-1] != config.image_size:
        side = (config.image_size, config.image_size)
        images = F.interpolate(images, size=side, mode="bilinear", antialias=True, align_corners=False)
    return {
        "accuracy": evaluate(model, images, split.test_labels, config)["accuracy"],
        "parameters": parameter_count(model),
        "latency": onnx_latency(SeCnnSpec(), model, config),
        "train_seconds": recorded["training"]["seconds"],
    }
