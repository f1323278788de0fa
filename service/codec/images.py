"""Encoded images <-> model tensors, as the model's ``attnserve.preprocess`` parameter says.

No I/O and no model state: bytes in, float32 arrays out (and back to PNG for generated
images). Every step is the one a training pipeline on PIL images does, so a client that sends
the same picture gets the same tensor:

1. decode PNG or JPEG (nothing else: no GIF frames, no TIFF tags, no SVG), refusing an image
   whose header declares more than ``max_pixels`` pixels *before* its pixel data is
   decompressed (the decompression-bomb check), and refusing truncated data;
2. apply the EXIF orientation (phones store portraits sideways);
3. convert to the model's mode (``L`` or ``RGB``): 16-bit greyscale keeps its top 8 bits,
   palette images go through RGBA so transparency is honoured, alpha is dropped;
4. resize to ``width`` x ``height`` with Pillow's BILINEAR filter (antialiased when shrinking,
   as torchvision's ``Resize`` on PIL images), no crop, when the size differs;
5. scale to [0, 1] (divide by 255), then ``(x - mean) / std`` per channel; CHW layout.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from service.errors import InvalidInput

FORMATS = ("PNG", "JPEG")
CHANNELS = {"L": 1, "RGB": 3}
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Preprocess:
    """The ``attnserve.preprocess`` parameter of a model's config.pbtxt."""

    mode: str  # "L" or "RGB"
    height: int
    width: int
    mean: tuple[float, ...]  # one per channel, or one for all
    std: tuple[float, ...]
    resample: str = "bilinear"

    @property
    def channels(self) -> int:
        return CHANNELS[self.mode]

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "Preprocess":
        """Validate the parameter; raises ValueError naming the bad key."""
        if not isinstance(raw, Mapping):
            raise ValueError("attnserve.preprocess must be a JSON object")
        mode = raw.get("mode")
        if mode not in CHANNELS:
            raise ValueError(f"mode {mode!r} is not one of {sorted(CHANNELS)}")
        channels = CHANNELS[mode]
        try:
            height, width = int(raw["height"]), int(raw["width"])
            mean = tuple(float(v) for v in raw.get("mean", [0.0]))
            std = tuple(float(v) for v in raw.get("std", [1.0]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"height, width (integers) and mean, std (number lists) are required: {exc}") from exc
        if height < 1 or width < 1:
            raise ValueError(f"height and width must be positive, got {height}x{width}")
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values for mode {mode}, got {len(values)}")
        if min(std) <= 0:
            raise ValueError("std values must be positive")
        resample = str(raw.get("resample", "bilinear")).lower()
        if resample not in RESAMPLE:
            raise ValueError(f"resample {resample!r} is not one of {sorted(RESAMPLE)}")
        return cls(mode, height, width, mean, std, resample)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int  # encoded size of one image
    max_pixels: int  # width x height as the file declares it


def decode_images(data: Sequence[bytes], preprocess: Preprocess, limits: ImageLimits) -> np.ndarray:
    """Encoded images -> float32 [N, C, H, W]; InvalidInput names the first bad ``images[i]``."""
    if not data:
        raise InvalidInput("no images: send at least one")
    out = np.empty((len(data), preprocess.channels, preprocess.height, preprocess.width), np.float32)
    for index, item in enumerate(data):
        out[index] = decode_image(item, preprocess, limits, index=index)
    return out


def decode_image(data: bytes, preprocess: Preprocess, limits: ImageLimits, *, index: int = 0) -> np.ndarray:
    """One encoded image -> float32 [C, H, W], normalised."""
    where = f"images[{index}]"
    if not data:
        raise InvalidInput(f"{where}: empty")
    if len(data) > limits.max_bytes:
        raise InvalidInput(f"{where}: {len(data)} bytes, above the limit of {limits.max_bytes} bytes per image")
    image = _open(data, limits, where)
    return normalise(to_model_image(image, preprocess), preprocess)


def _open(data: bytes, limits: ImageLimits, where: str) -> Image.Image:
    try:
        # open() reads only the header; the pixel data is decoded by load(), after the check.
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own cap (2x MAX_IMAGE_PIXELS)
        raise InvalidInput(f"{where}: too many pixels (limit {limits.max_pixels})") from exc
    except Exception as exc:  # Pillow raises many types on hostile input; all mean "not an image"
        raise InvalidInput(f"{where}: not a PNG or JPEG image") from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InvalidInput(
            f"{where}: {width}x{height} is {width * height} pixels, above the limit of {limits.max_pixels}"
        )
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except Exception as exc:
        raise InvalidInput(f"{where}: corrupt or truncated {image.format} data ({type(exc).__name__})") from exc


def to_model_image(image: Image.Image, preprocess: Preprocess) -> Image.Image:
    """Mode conversion and resize: a PIL image of the model's mode and size."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # 16-bit greyscale PNG: keep the top 8 bits (convert("L") would clip instead of scale).
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray((wide >> 8).astype(np.uint8))  # uint8 2-D: mode L
    elif image.mode == "P":
        image = image.convert("RGBA")  # palette transparency needs the RGBA route
    if image.mode != preprocess.mode:
        image = image.convert(preprocess.mode)
    size = (preprocess.width, preprocess.height)
    if image.size != size:
        image = image.resize(size, RESAMPLE[preprocess.resample])
    return image


def normalise(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """An 8-bit image of the model's mode and size -> float32 [C, H, W], (x/255 - mean)/std."""
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    mean = np.asarray(preprocess.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(preprocess.std, np.float32).reshape(-1, 1, 1)
    return (chw - mean) / std


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A generator's [C, H, W] image in [-1, 1] -> uint8 [H, W, C] (round half to even)."""
    scaled = np.rint((np.asarray(image, np.float32) + 1.0) * 127.5)
    return np.clip(scaled, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def encode_png(image: np.ndarray) -> bytes:
    """[C, H, W] in [-1, 1] with C = 1 or 3 -> PNG bytes (mode L or RGB)."""
    pixels = to_uint8(image)
    if pixels.shape[2] not in (1, 3):
        raise ValueError(f"cannot write a PNG with {pixels.shape[2]} channels")
    buffer = io.BytesIO()
    # uint8 [H, W] is written as mode L, [H, W, 3] as RGB.
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()
