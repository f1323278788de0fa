"""Bad input to the attnserve API, generated: nothing crashes, every answer is a clear status.

Classify gets corrupt, truncated and random images, other formats, headers that declare huge
sizes and real decompression bombs; Generate out-of-range counts, classes, seeds, truncation
and attention queries; Encode out-of-range and overlong token ids and arbitrary text. Unary
and streamed. After every case a good request still gets the right answer.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from service.proto.attnserve.v1 import attnserve_pb2 as api_pb
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_grpc
from tests.integration.support import ENCODER, SAGAN, SECNN
from tests.reliability.fuzzing import CALL_TIMEOUT_S, FUZZ, odd_floats, odd_ints, odd_text, outcome


# -- attnserve API --------------------------------------------------------------------------------------
def _png(width: int, height: int, mode: str = "L", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _declared_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR claiming another size (a decompression bomb's header)."""
    ihdr = bytearray(png[12:29])  # type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    return png[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + png[33:]


def _bomb(side: int) -> bytes:
    """A small file that inflates to side x side pixels of zeros."""
    raw = zlib.compress(b"".join(b"\0" + b"\0" * side for _ in range(side)), 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _other_format(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def images(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["png", "png", "jpeg", "truncated", "corrupt", "random", "empty",
                                 "declared-huge", "declared-big", "bomb", "gif", "bmp", "tiff"]))
    size = draw(st.sampled_from([(28, 28), (1, 1), (64, 17), (300, 2)]))
    if kind == "png":
        return _png(*size, mode=draw(st.sampled_from(["L", "RGB", "RGBA"])), seed=draw(st.integers(0, 99)))
    if kind == "jpeg":
        return _jpeg(draw(st.integers(0, 99)))
    if kind == "truncated":
        data = draw(st.sampled_from([_png(28, 28), _jpeg(1)]))
        return data[: draw(st.integers(1, len(data) - 1))]
    if kind == "corrupt":
        data = bytearray(draw(st.sampled_from([_png(28, 28), _jpeg(2)])))
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(8, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=200))
    if kind == "empty":
        return b""
    if kind == "declared-huge":  # past Pillow's own bomb limit
        return _declared_size(_png(28, 28), 200_000, 200_000)
    if kind == "declared-big":  # past the server's pixel limit, under Pillow's
        return _declared_size(_png(28, 28), 5000, 5000)
    if kind == "bomb":
        return _bomb(draw(st.sampled_from([3000, 5000])))
    return _other_format(kind.upper())


@FUZZ
@given(data=st.data())
def test_classify_fuzz(data, channel, still_serves, outcomes) -> None:
    request = api_pb.ClassifyRequest(
        model=data.draw(st.one_of(st.sampled_from(["", SECNN]), st.sampled_from(["", SECNN, ENCODER]), odd_text), label="model"),
        images=data.draw(st.lists(images(), max_size=4) | st.just([b""] * 300), label="images"),
        top_k=data.draw(st.sampled_from([0, 1, 5, 10, 11, 2**32 - 1]), label="top_k"),
        channel_weights=data.draw(st.booleans()),
    )
    stub = api_grpc.AttnServeStub(channel)
    if data.draw(st.booleans(), label="stream"):
        outcome(lambda: stub.ClassifyStream(iter([request]), timeout=CALL_TIMEOUT_S), outcomes, "ClassifyStream")
    else:
        outcome(lambda: stub.Classify(request, timeout=CALL_TIMEOUT_S), outcomes, "Classify")
    still_serves(SECNN)


@FUZZ
@given(data=st.data())
def test_generate_fuzz(data, channel, still_serves, outcomes) -> None:
    request = api_pb.GenerateRequest(
        model=data.draw(st.one_of(st.sampled_from(["", SAGAN]), st.sampled_from(["", SAGAN, SECNN]), odd_text), label="model"),
        class_ids=data.draw(st.lists(odd_ints, max_size=3)),
        class_labels=data.draw(st.lists(odd_text, max_size=2)),
        truncation=data.draw(odd_floats),
    )
    count = data.draw(st.sampled_from([None, 0, 1, 2, 257, 2**32 - 1]), label="count")
    if count is not None:
        request.count = count
    if data.draw(st.booleans()):
        request.seed = data.draw(st.integers(0, 2**64 - 1))
    if data.draw(st.booleans()):
        request.attention.all_queries = data.draw(st.booleans())
        for _ in range(data.draw(st.integers(0, 3))):
            request.attention.queries.add(y=data.draw(st.sampled_from([0, 5, 31, 32, 2**32 - 1])),
                                          x=data.draw(st.sampled_from([0, 31, 32, 2**32 - 1])))
    outcome(lambda: api_grpc.AttnServeStub(channel).Generate(request, timeout=CALL_TIMEOUT_S), outcomes, "Generate")
    still_serves(SAGAN)


@st.composite
def sequences(draw: Any) -> api_pb.Sequence:
    if draw(st.booleans()):
        ids = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 100, 259]) | odd_ints,
                            max_size=draw(st.sampled_from([0, 5, 130]))))
        return api_pb.Sequence(ids=api_pb.TokenIds(ids=ids))
    return api_pb.Sequence(text=draw(st.text(max_size=300) | st.sampled_from(["", "\x00", "é" * 200, "🙂" * 50])))


@FUZZ
@given(data=st.data())
def test_encode_fuzz(data, channel, still_serves, outcomes) -> None:
    request = api_pb.EncodeRequest(
        model=data.draw(st.one_of(st.sampled_from(["", ENCODER]), st.sampled_from(["", ENCODER, SECNN]), odd_text), label="model"),
        sequences=data.draw(st.lists(sequences(), max_size=4) | st.just([api_pb.Sequence(text="a")] * 300)),
        top_k=data.draw(st.sampled_from([0, 1, 10, 11, 2**32 - 1])),
        attention=data.draw(st.booleans()),
    )
    stub = api_grpc.AttnServeStub(channel)
    if data.draw(st.booleans(), label="stream"):
        outcome(lambda: stub.EncodeStream(iter([request, request]), timeout=CALL_TIMEOUT_S), outcomes, "EncodeStream")
    else:
        outcome(lambda: stub.Encode(request, timeout=CALL_TIMEOUT_S), outcomes, "Encode")
    still_serves(ENCODER)
