"""Small helpers of the attnserve API tests: images as PNG bytes, and status checks."""

from __future__ import annotations

import io
from typing import Any, Callable

import grpc
import numpy as np
import pytest
from PIL import Image

from service.client import ClientError


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def digits(count: int, seed: int = 0, size: tuple[int, int] = (28, 28)) -> list[np.ndarray]:
    """Random 8-bit greyscale pictures (the default classifier reads 28x28 L)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=size, dtype=np.uint8) for _ in range(count)]


def normalised(pixels: np.ndarray, preprocess: dict) -> np.ndarray:
    """The config's recipe, written out: [0, 1], then (x - mean) / std; [1, C, H, W] float32."""
    x = pixels.astype(np.float64) / 255.0
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    mean = np.asarray(preprocess["mean"], np.float64)[:, None, None]
    std = np.asarray(preprocess["std"], np.float64)[:, None, None]
    return ((x - mean) / std).astype(np.float32)[None]


def expect_status(call: Callable[[], Any], code: str, match: str = "") -> str:
    """Run ``call``; it must fail with gRPC status ``code`` and a message containing ``match``."""
    with pytest.raises((grpc.RpcError, ClientError)) as caught:
        call()
    error = caught.value
    got = error.code if isinstance(error, ClientError) else error.code().name  # type: ignore[union-attr]
    message = error.details if isinstance(error, ClientError) else error.details()  # type: ignore[union-attr]
    assert got == code, f"expected {code}, got {got}: {message}"
    assert match in message, f"{match!r} not in {message!r}"
    return message
