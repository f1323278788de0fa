"""Small PNG renderings for the CLI, with Pillow only: image grids and attention heatmaps.

Heatmaps are normalised per panel (divided by their largest weight): attention rows sum to 1,
so raw weights would all be faint; the pattern is what a reader looks for.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The "inferno" colour scale sampled at five points (dark = little weight, light = most).
ANCHORS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], np.float64)
BACKGROUND = (24, 24, 24)
MARKER = (0, 255, 255)
TEXT = (230, 230, 230)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (shape + (3,)), linear between the anchors."""
    position = np.clip(np.asarray(values, np.float64), 0.0, 1.0) * (len(ANCHORS) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(ANCHORS) - 1)
    frac = (position - low)[..., None]
    return np.rint(ANCHORS[low] * (1 - frac) + ANCHORS[high] * frac).astype(np.uint8)


def _normalised(weights: np.ndarray) -> np.ndarray:
    top = float(np.max(weights)) if np.size(weights) else 0.0
    return np.asarray(weights, np.float64) / top if top > 0 else np.zeros_like(weights, np.float64)


def image_grid(images: Sequence[Image.Image], columns: int | None = None, scale: int = 1, pad: int = 2) -> Image.Image:
    """Images side by side in rows (same size each), upscaled by ``scale`` without smoothing."""
    if not images:
        raise ValueError("no images to lay out")
    columns = max(1, min(columns or math.ceil(math.sqrt(len(images))), len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].width * scale, images[0].height * scale
    sheet = Image.new("RGB", (columns * (width + pad) + pad, rows * (height + pad) + pad), BACKGROUND)
    for i, image in enumerate(images):
        row, col = divmod(i, columns)
        tile = image.convert("RGB").resize((width, height), Image.Resampling.NEAREST)
        sheet.paste(tile, (pad + col * (width + pad), pad + row * (height + pad)))
    return sheet


def heat_overlay(image: Image.Image, weights: np.ndarray, scale: int = 8, alpha: float = 0.6,
                 normalise: bool = True) -> Image.Image:
    """``weights`` (any grid over the whole image), smoothed up to the image and blended over it;
    ``normalise=False`` keeps weights already in [0, 1] (CBAM's sigmoid maps) as they are."""
    base = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    values = _normalised(weights) if normalise else np.asarray(weights, np.float64)
    heat = Image.fromarray(colormap(values)).resize(base.size, Image.Resampling.BILINEAR)
    return Image.blend(base, heat, alpha)


def affine_outline(image: Image.Image, theta: np.ndarray, scale: int = 8) -> Image.Image:
    """The input image with the quadrilateral a spatial transformer's ``theta`` [2, 3] crops
    (torch affine_grid convention, align_corners=False) drawn on it in cyan."""
    base = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    corners = np.array([(-1, -1, 1), (1, -1, 1), (1, 1, 1), (-1, 1, 1)], np.float64)  # (x, y, 1)
    mapped = corners @ np.asarray(theta, np.float64).T  # normalised input coordinates
    points = [((x + 1) / 2 * base.width, (y + 1) / 2 * base.height) for x, y in mapped]
    ImageDraw.Draw(base).polygon(points, outline=MARKER, width=max(1, scale // 4))
    return base


def attention_overlay(
    image: Image.Image, weights: np.ndarray, pixel: tuple[int, int], scale: int = 8, alpha: float = 0.6
) -> Image.Image:
    """Where one pixel looks: the key-grid weights, smoothed up to the image, over the image;
    the query pixel is marked with a cyan square."""
    out = heat_overlay(image, weights, scale, alpha)
    y, x = pixel
    half = max(2, scale // 2)
    cy, cx = int((y + 0.5) * scale), int((x + 0.5) * scale)
    ImageDraw.Draw(out).rectangle((cx - half, cy - half, cx + half, cy + half), outline=MARKER, width=max(1, scale // 4))
    return out


def head_token_heatmap(
    weights: np.ndarray, tokens: Sequence[str], cell: int = 24, rows: Sequence[str] | None = None
) -> Image.Image:
    """Heads (rows) x key tokens (columns); each row normalised to its own largest weight.
    ``rows`` labels the rows instead of "head h" (a pair model: its query tokens)."""
    heads, length = weights.shape
    font = ImageFont.load_default()
    left, top = 56, 20
    sheet = Image.new("RGB", (left + length * cell + 4, top + heads * cell + 4), BACKGROUND)
    normalised = np.stack([_normalised(row) for row in weights])
    cells = Image.fromarray(colormap(normalised)).resize((length * cell, heads * cell), Image.Resampling.NEAREST)
    sheet.paste(cells, (left, top))
    draw = ImageDraw.Draw(sheet)
    for h in range(heads):
        label = f"head {h}" if rows is None else _short(rows[h])
        draw.text((4, top + h * cell + cell // 4), label, fill=TEXT, font=font)
    for i, token in enumerate(tokens[:length]):
        draw.text((left + i * cell + 2, 4), _short(token), fill=TEXT, font=font)
    return sheet


def _short(token: str) -> str:
    return token.strip("<>").removeprefix("\\")[:3]  # "<bos>" -> "bos", "\\xc3" -> "xc3"
