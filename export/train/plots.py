"""The pictures shipped next to the weights (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # headless; must happen before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def confusion_matrices(
    matrices: Mapping[str, Sequence[Sequence[int]]], labels: Sequence[str], path: Path
) -> None:
    """One row-normalised confusion matrix per title, side by side, counts written in."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(6.2 * len(matrices), 5.6), squeeze=False)
    for ax, (title, matrix) in zip(axes[0], matrices.items()):
        counts = np.asarray(matrix)
        rates = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
        ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        for (row, col), count in np.ndenumerate(counts):
            if count:
                colour = "white" if rates[row, col] > 0.5 else "black"
                ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid(images: np.ndarray, path: Path, row_labels: Sequence[str]) -> None:
    """[rows, cols, H, W] images in [0, 1] as one grid, a label left of each row."""
    plt = _pyplot()
    rows, cols, h, w = images.shape
    gap = 2
    canvas = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap))
    for r in range(rows):
        for c in range(cols):
            canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = images[
                r, c
            ]
    fig, ax = plt.subplots(figsize=(cols * 0.55 + 0.6, rows * 0.55 + 0.3))
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks([r * (h + gap) + h / 2 for r in range(rows)], row_labels)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
