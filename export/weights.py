"""Where a model's weights come from: shipped weights, a checkpoint, or a seeded random init.

The default export uses the trained weights shipped in ``export/weights/<model>.safetensors``
(made by ``python -m export.train``; see the model card next to each file) when the file is
there and the default variant is exported. Otherwise, or with ``--random-weights``, a model
gets seeded random weights (``torch.manual_seed`` per model, so the same command writes the
same model): the shapes, services and protocol are real, the answers are not.

A freshly initialised batch norm has running mean 0 and variance 1, which would make folding
it a no-op and leave activations at an arbitrary scale, so seeded models get "standing
statistics" (as BigGAN computes them): a few forward passes in train mode on random inputs,
with a cumulative average.

A checkpoint is a ``state_dict`` in a ``.pt`` (torch.save) or ``.safetensors`` file, keyed as
the model's own ``state_dict()`` (spectral-norm weights as ``...parametrizations.weight.*``).
Keys and shapes are compared before loading so the error names what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.errors import CheckpointError
from export.specs import ModelSpec

CALIBRATION_BATCHES = 4
CALIBRATION_BATCH_SIZE = 16
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"


def shipped_weights(name: str) -> Path | None:
    """``export/weights/<name>.safetensors`` when it exists (trained default weights)."""
    path = SHIPPED_DIR / f"{name}.safetensors"
    return path if path.is_file() else None


def seeded_model(spec: ModelSpec, config: Any) -> nn.Module:
    """The model with deterministic random weights and standing batch-norm statistics."""
    torch.manual_seed(spec.seed)
    model = spec.build(config)
    generator = torch.Generator().manual_seed(spec.seed)
    batches = (
        spec.sample(config, CALIBRATION_BATCH_SIZE, generator) for _ in range(CALIBRATION_BATCHES)
    )
    calibrate_batch_norm(model, batches)
    return model.eval()


def calibrate_batch_norm(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
    """Replace running statistics by their plain average over ``batches``; leaves eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(*batch.values())
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    model.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a ``.pt`` state dict (weights only)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled objects, wrong format
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"checkpoint {path} is not a state_dict of named tensors")
    return state


def _listing(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model`` after checking every key and shape matches."""
    state = read_state_dict(path)
    expected = model.state_dict()
    problems = []
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    mismatched = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if mismatched:
        problems.append(f"shape mismatches (checkpoint != model): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    model.eval()
