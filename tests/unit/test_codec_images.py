"""service.codec.images: decoding, preprocessing as the config says, limits, PNG output."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from service.codec.images import (
    ImageLimits,
    Preprocess,
    decode_image,
    decode_images,
    encode_png,
    to_uint8,
)
from service.errors import InvalidInput

MNIST = Preprocess.from_json({"mode": "L", "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081]})
RGB = Preprocess.from_json({"mode": "RGB", "height": 16, "width": 24, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]})
LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=4096 * 4096)


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def random_image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], *channels), dtype=np.uint8))


def by_hand(image: Image.Image, mean: list[float], std: list[float]) -> np.ndarray:
    """The config's recipe written out independently: [0, 1], then (x - mean) / std, CHW."""
    x = np.asarray(image, dtype=np.float64) / 255.0
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    return ((x - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]).astype(np.float32)


# -- the preprocess parameter ------------------------------------------------------------------
def test_preprocess_reads_the_exported_parameter() -> None:
    assert (MNIST.mode, MNIST.height, MNIST.width, MNIST.channels) == ("L", 28, 28, 1)
    assert MNIST.mean == (0.1307,) and MNIST.std == (0.3081,) and MNIST.resample == "bilinear"


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"mode": "CMYK", "height": 2, "width": 2}, "mode"),
        ({"mode": "L", "width": 2}, "height"),
        ({"mode": "L", "height": 0, "width": 2}, "positive"),
        ({"mode": "RGB", "height": 2, "width": 2, "mean": [0.1, 0.2]}, "mean needs 1 or 3"),
        ({"mode": "L", "height": 2, "width": 2, "std": [0.0]}, "std values must be positive"),
        ({"mode": "L", "height": 2, "width": 2, "resample": "magic"}, "resample"),
        (["L"], "JSON object"),
    ],
)
def test_preprocess_rejects_bad_parameters(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocess.from_json(raw)  # type: ignore[arg-type]


# -- decoding and preprocessing ----------------------------------------------------------------
def test_png_at_model_size_is_scaled_and_normalised_exactly() -> None:
    image = random_image("L", (28, 28))
    tensor = decode_image(encoded(image), MNIST, LIMITS)
    assert tensor.shape == (1, 28, 28) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, by_hand(image, [0.1307], [0.3081]), rtol=0, atol=1e-6)


def test_rgb_image_is_converted_and_resized_as_pil_does() -> None:
    image = random_image("RGB", (50, 37), seed=1)
    tensor = decode_image(encoded(image), MNIST, LIMITS)
    expected = image.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(tensor, by_hand(expected, [0.1307], [0.3081]), atol=1e-6)


def test_per_channel_normalisation_for_rgb_models() -> None:
    image = random_image("RGB", (24, 16), seed=2)
    tensor = decode_image(encoded(image), RGB, LIMITS)
    assert tensor.shape == (3, 16, 24)
    np.testing.assert_allclose(tensor, by_hand(image, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]), atol=1e-5)


def test_greyscale_input_to_an_rgb_model_repeats_the_channel() -> None:
    tensor = decode_image(encoded(random_image("L", (24, 16))), RGB, LIMITS)
    raw = tensor * np.array([0.2, 0.25, 0.3], np.float32)[:, None, None] + np.array([0.5, 0.4, 0.3], np.float32)[:, None, None]
    np.testing.assert_allclose(raw[0], raw[1], atol=1e-5)
    np.testing.assert_allclose(raw[1], raw[2], atol=1e-5)


def test_sixteen_bit_png_keeps_its_top_eight_bits() -> None:
    wide = (np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 83).astype(np.uint16)
    tensor = decode_image(encoded(Image.fromarray(wide)), MNIST, LIMITS)
    expected = Image.fromarray((wide >> 8).astype(np.uint8))
    np.testing.assert_allclose(tensor, by_hand(expected, [0.1307], [0.3081]), atol=1e-6)


def test_palette_image_with_transparency_decodes_without_warnings(recwarn: pytest.WarningsRecorder) -> None:
    palette = random_image("RGB", (28, 28), seed=3).convert("P")
    palette.info["transparency"] = 0
    tensor = decode_image(encoded(palette, transparency=0), MNIST, LIMITS)
    assert tensor.shape == (1, 28, 28)
    assert not [w for w in recwarn if "transparency" in str(w.message)]


def test_jpeg_exif_orientation_is_applied() -> None:
    # A landscape picture stored with "rotate 90 degrees clockwise to display" (orientation 6).
    image = random_image("L", (28, 14), seed=4)
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = encoded(image, "JPEG", quality=95, exif=exif.tobytes())
    upright = Preprocess("L", height=28, width=14, mean=(0.0,), std=(1.0,))
    tensor = decode_image(tagged, upright, LIMITS)
    plain = Image.open(io.BytesIO(encoded(image, "JPEG", quality=95)))
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(tagged)))
    assert expected.size == (14, 28) and plain.size == (28, 14)
    np.testing.assert_allclose(tensor, by_hand(expected, [0.0], [1.0]), atol=1e-6)


def test_decode_images_stacks_in_request_order() -> None:
    images = [random_image("L", (28, 28), seed=s) for s in range(3)]
    batch = decode_images([encoded(i) for i in images], MNIST, LIMITS)
    assert batch.shape == (3, 1, 28, 28)
    for row, image in zip(batch, images, strict=True):
        np.testing.assert_allclose(row, by_hand(image, [0.1307], [0.3081]), atol=1e-6)


# -- what is refused, and how it is named -------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A greyscale PNG declaring width x height whose pixel data stops after one row
    (what a decompression bomb looks like before its data is inflated)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    one_row = zlib.compress(b"\x00" * (1 + min(width, 4096)))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", one_row)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "images\\[1\\]: empty"),
        (b"definitely not an image", "images\\[1\\]: not a PNG or JPEG"),
        (b"GIF89a" + b"\x00" * 64, "images\\[1\\]: not a PNG or JPEG"),
        (png_header_only(3000, 3000), "images\\[1\\]: 3000x3000 is 9000000 pixels, above the limit of 1000000"),
        (png_header_only(200_000, 200_000), "images\\[1\\]: too many pixels"),
        (encoded(random_image("L", (64, 64)))[:300], "images\\[1\\]: corrupt or truncated PNG"),
    ],
    ids=["empty", "garbage", "gif", "pixel-limit", "pillow-bomb-limit", "truncated"],
)
def test_bad_images_are_invalid_input_naming_their_index(data: bytes, message: str) -> None:
    good = encoded(random_image("L", (28, 28)))
    limits = ImageLimits(max_bytes=1 << 20, max_pixels=1_000_000)
    with pytest.raises(InvalidInput, match=message):
        decode_images([good, data, good], MNIST, limits)


def test_decompression_bomb_is_refused_before_its_pixels_are_decompressed() -> None:
    # 6000 x 6000 zeros: 36 MB of pixels in a ~35 kB file.
    bomb = encoded(Image.new("L", (6000, 6000)), optimize=True)
    assert len(bomb) < 100_000
    with pytest.raises(InvalidInput, match="36000000 pixels, above the limit"):
        decode_image(bomb, MNIST, ImageLimits(max_bytes=1 << 20, max_pixels=4096 * 4096))


def test_truncated_png_is_invalid_input() -> None:
    data = encoded(random_image("L", (64, 64)))
    with pytest.raises(InvalidInput, match="images\\[0\\]: corrupt or truncated PNG"):
        decode_image(data[: len(data) // 2], MNIST, LIMITS)


def test_encoded_size_limit() -> None:
    data = encoded(random_image("L", (64, 64)))
    with pytest.raises(InvalidInput, match=f"images\\[4\\]: {len(data)} bytes, above the limit of 100 bytes"):
        decode_image(data, MNIST, ImageLimits(max_bytes=100, max_pixels=10**6), index=4)


def test_no_images_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="no images"):
        decode_images([], MNIST, LIMITS)


# -- generated images out ----------------------------------------------------------------------
def test_to_uint8_maps_minus_one_to_one_onto_0_255() -> None:
    image = np.array([[[-1.0, -0.5, 0.0, 0.5, 1.0, 3.0, -7.0]]], np.float32)
    assert to_uint8(image)[..., 0].tolist() == [[0, 64, 128, 191, 255, 255, 0]]


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_encode_png_round_trips(channels: int, mode: str) -> None:
    image = np.random.default_rng(5).uniform(-1, 1, size=(channels, 9, 7)).astype(np.float32)
    decoded = Image.open(io.BytesIO(encode_png(image)))
    assert decoded.format == "PNG" and decoded.mode == mode and decoded.size == (7, 9)
    pixels = np.asarray(decoded)
    np.testing.assert_array_equal(pixels.reshape(9, 7, channels), to_uint8(image))
