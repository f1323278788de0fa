"""What every training run shares: seeds, threads, checkpoints, weights and metrics files.

A run is reproducible within noise from a fresh clone: every random draw goes through a
seeded ``torch.Generator`` or ``numpy.random.Generator`` (plus the global torch seed for
weight initialisation), and the data splits use their own fixed seeds so that ``--seed``
changes the training run but never which examples are held out.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Where shipped weights live, relative to the repository root (export/weights/).
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "weights"
# Training checkpoints: large, resumable, never shipped (build/ is git-ignored).
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / "build" / "train"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (the global generator initialises the weights)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """Pin torch to ``threads`` intra-op threads: the machine is shared, so never take all."""
    torch.set_num_threads(max(1, threads))


def default_threads() -> int:
    return int(os.environ.get("ATTNSERVE_TRAIN_THREADS", "2"))


def bf16_is_fast() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16).

    Where it does, autocast to bfloat16 runs the matmuls and convolutions several times
    faster (measured 4x on the encoder); elsewhere bfloat16 is emulated and slower than fp32.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # private probes; a torch without them gets fp32
        return False


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` where the CPU has bfloat16 hardware, else ``fp32``."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_is_fast() else "fp32"
    return precision


def autocast(precision: str) -> torch.autocast:
    """Mixed precision for the forward pass; weights, optimiser state and saved files stay
    float32 (autocast only changes the dtype ops compute in)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def save_weights(model: nn.Module, path: Path) -> None:
    """The model's ``state_dict`` as safetensors (float32, contiguous, no shared storage)."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    path.chmod(0o644)  # safetensors writes 0600; shipped files must be readable by all


def load_weights_into(model: nn.Module, path: Path) -> nn.Module:
    """Load a safetensors ``state_dict`` strictly and return the model in eval mode."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def environment() -> dict[str, Any]:
    """What the numbers were measured on, recorded next to them."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }


@dataclass
class Checkpointer:
    """Periodic resumable checkpoints (model, optimiser, schedule, step, RNG states)."""

    directory: Path
    name: str

    @property
    def path(self) -> Path:
        return self.directory / f"{self.name}.pt"

    def save(self, step: int, modules: Mapping[str, Any]) -> None:
        state = {key: module.state_dict() for key, module in modules.items()}
        state["step"] = step
        state["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
        self.directory.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_suffix(".tmp")
        torch.save(state, scratch)
        scratch.replace(self.path)  # atomic: a killed run never leaves half a checkpoint

    def load(self, modules: Mapping[str, Any]) -> int:
        """Restore ``modules`` in place; returns the step to resume from (0 when none)."""
        if not self.path.is_file():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        for key, module in modules.items():
            module.load_state_dict(state[key])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        return int(state["step"])


def cosine_warmup(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@contextmanager
def timed(results: dict[str, Any], key: str) -> Iterator[None]:
    """Store the wall time of the block in ``results[key]`` (seconds, 1 decimal)."""
    start = time.perf_counter()
    yield
    results[key] = round(time.perf_counter() - start, 1)


@torch.no_grad()
def predict_batches(
    model: nn.Module, inputs: torch.Tensor, batch_size: int = 500, output: int = 0
) -> torch.Tensor:
    """``model(inputs)[output]`` in batches, concatenated (eval mode, no grad)."""
    model.eval()
    parts = [model(inputs[i : i + batch_size])[output] for i in range(0, len(inputs), batch_size)]
    return torch.cat(parts)
