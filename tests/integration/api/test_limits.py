"""Every limit of the attnserve API answers with its status and a message naming what is
wrong, and the server goes on serving afterwards."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Callable

import grpc
import numpy as np
import pytest
from PIL import Image

from service.client import NO_RETRY, Client
from service.proto.attnserve.v1 import attnserve_pb2 as pb
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_grpc
from tests.conftest import ServerProcess
from tests.integration.api.helpers import digits, expect_status, png
from tests.integration.support import SECNN

GOOD = png(digits(1)[0])


@pytest.fixture
def still_serves(api: Client) -> Callable[[], None]:
    """After a refused request, each RPC still answers a good one."""

    def check() -> None:
        assert len(api.classify([GOOD]).items) == 1
        assert len(api.generate(1, seed=1).images) == 1
        assert len(api.encode(["ok"]).items) == 1
        assert api.health() == "SERVING"

    return check


def header_only_png(width: int, height: int) -> bytes:
    """A PNG declaring width x height whose pixel data stops after one row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4097))


def zeros_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# -- Classify ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "images, match",
    [
        ([], "no images"),
        ([GOOD, b"garbage", GOOD], "images[1]: not a PNG or JPEG image"),
        ([GOOD, GOOD, GOOD, png(digits(1)[0])[:200]], "images[3]: corrupt or truncated PNG"),
        ([b"GIF89a" + b"\x00" * 32], "images[0]: not a PNG or JPEG image"),
        ([GOOD, b""], "images[1]: empty"),
        ([GOOD, zeros_png(5000)], "images[1]: 5000x5000 is 25000000 pixels, above the limit of 16777216"),
        ([header_only_png(100_000, 100_000)], "images[0]: too many pixels"),
        ([GOOD] * 257, "257 images in one request, above the limit of 256"),
    ],
    ids=["none", "garbage", "truncated", "gif", "empty", "pixel-bomb", "header-bomb", "too-many"],
)
def test_bad_images(api: Client, still_serves: Callable[[], None], images: list[bytes], match: str) -> None:
    expect_status(lambda: api.classify(images), "INVALID_ARGUMENT", match)
    still_serves()


def test_unknown_model_is_not_found(api: Client, still_serves: Callable[[], None]) -> None:
    expect_status(lambda: api.classify([GOOD], model="no_such_model"), "NOT_FOUND", "no_such_model")
    expect_status(lambda: api.encode(["x"], model="no_such_model"), "NOT_FOUND", "no_such_model")
    expect_status(lambda: api.classify([GOOD], version="7"), "NOT_FOUND", "version")
    still_serves()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c: c.classify([GOOD], model="transformer_encoder"), "does not take images"),
        (lambda c: c.generate(1, model=SECNN), "not a class-conditional generator"),
        (lambda c: c.encode(["x"], model=SECNN), "not a sequence encoder"),
        (lambda c: c.encode(["x"], model="sagan_generator"), "not a sequence encoder"),
    ],
    ids=["classify-encoder", "generate-classifier", "encode-classifier", "encode-generator"],
)
def test_a_model_of_the_wrong_kind(api: Client, call: Callable[[Client], object], match: str) -> None:
    expect_status(lambda: call(api), "INVALID_ARGUMENT", match)


def test_encoded_size_limit(limited_server: ServerProcess) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(60, 60), dtype=np.uint8)  # under 4096 pixels
    big = png(noise)  # noise does not compress: ~3.6 kB
    assert len(big) > 2048
    with Client(limited_server.url, retry=NO_RETRY) as client:
        expect_status(lambda: client.classify([GOOD, big]), "INVALID_ARGUMENT",
                      f"images[1]: {len(big)} bytes, above the limit of 2048 bytes per image")
        assert len(client.classify([GOOD]).items) == 1


def test_small_limits_are_the_configured_ones(limited_server: ServerProcess) -> None:
    with Client(limited_server.url, retry=NO_RETRY) as client:
        expect_status(lambda: client.classify([GOOD] * 5), "INVALID_ARGUMENT", "5 images in one request, above the limit of 4")
        expect_status(lambda: client.classify([png(np.zeros((65, 65), np.uint8))]), "INVALID_ARGUMENT",
                      "65x65 is 4225 pixels, above the limit of 4096")
        expect_status(lambda: client.generate(5), "INVALID_ARGUMENT", "above the limit of 4")
        expect_status(lambda: client.encode([[5] * 17]), "INVALID_ARGUMENT", "17 tokens, above the model's maximum of 16")
        item = client.encode(["a longer text than sixteen bytes"]).items[0]
        assert item.truncated and len(item.ids) == 16  # text is cut to the smaller cap
        assert len(client.classify([GOOD] * 4).items) == 4


# -- Generate ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "request_, match",
    [
        (pb.GenerateRequest(count=0), "no images"),
        (pb.GenerateRequest(count=257), "257 images in one request"),
        (pb.GenerateRequest(class_labels=["no-such-class"]), "unknown class labels ['no-such-class']"),
        (pb.GenerateRequest(class_ids=[10]), "class ids [10] out of range; this model has classes 0..9"),
        (pb.GenerateRequest(class_ids=[-1]), "class ids [-1] out of range"),
        (pb.GenerateRequest(class_ids=[1], class_labels=["1"]), "not both"),
        (pb.GenerateRequest(count=3, class_ids=[1, 2]), "2 classes for 3 images"),
        (pb.GenerateRequest(truncation=-1.0), "truncation -1.0 must be 0 (off)"),
        (pb.GenerateRequest(truncation=float("nan")), "truncation nan"),
        (pb.GenerateRequest(seed=2**64 - 1, count=2), "overflows uint64"),
        (pb.GenerateRequest(attention=pb.AttentionRequest(queries=[pb.Point(y=32, x=0)])),
         "attention.queries[0] (32, 0) is outside the 32x32 image"),
        (pb.GenerateRequest(attention=pb.AttentionRequest()), "give query pixels or set all_queries"),
        (pb.GenerateRequest(attention=pb.AttentionRequest(queries=[pb.Point()] * 257)), "at most one per cell"),
    ],
    ids=["zero", "too-many", "unknown-label", "class-too-big", "class-negative", "both", "mismatch",
         "negative-truncation", "nan-truncation", "seed-overflow", "pixel-outside", "no-queries", "too-many-queries"],
)
def test_bad_generate_requests(
    stub: api_grpc.AttnServeStub, still_serves: Callable[[], None], request_: pb.GenerateRequest, match: str
) -> None:
    expect_status(lambda: stub.Generate(request_), "INVALID_ARGUMENT", match)
    still_serves()


# -- Encode -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sequences, match",
    [
        ([], "no sequences"),
        ([pb.Sequence(ids=pb.TokenIds(ids=[]))], "sequences[0]: empty sequence"),
        ([pb.Sequence(text="ok"), pb.Sequence(ids=pb.TokenIds(ids=[5] * 129))],
         "sequences[1]: 129 tokens, above the model's maximum of 128"),
        ([pb.Sequence(ids=pb.TokenIds(ids=[1, 260, 2]))], "token id 260 at position 1 is outside the vocabulary [0, 260)"),
        ([pb.Sequence(ids=pb.TokenIds(ids=[-3]))], "token id -3 at position 0"),
        ([pb.Sequence()], "sequences[0]: set ids or text"),
        ([pb.Sequence(text="x")] * 257, "257 sequences in one request"),
    ],
    ids=["none", "empty", "too-long", "out-of-vocab", "negative", "unset", "too-many"],
)
def test_bad_sequences(
    stub: api_grpc.AttnServeStub, still_serves: Callable[[], None], sequences: list[pb.Sequence], match: str
) -> None:
    expect_status(lambda: stub.Encode(pb.EncodeRequest(sequences=sequences)), "INVALID_ARGUMENT", match)
    still_serves()


def test_errors_are_counted_as_api_requests_of_the_model(api: Client, server: ServerProcess) -> None:
    before = server.metric("attnserve_requests_total", model=SECNN, surface="api", code="INVALID_ARGUMENT")
    expect_status(lambda: api.classify([b"bad"]), "INVALID_ARGUMENT")
    assert server.metric("attnserve_requests_total", model=SECNN, surface="api", code="INVALID_ARGUMENT") == before + 1


def test_unary_errors_are_not_retried(server: ServerProcess) -> None:
    """INVALID_ARGUMENT is final: the call fails once, at once (the server counts one)."""
    with Client(server.url) as client:
        before = server.metric("attnserve_requests_total", model=SECNN, surface="api", code="INVALID_ARGUMENT")
        expect_status(lambda: client.classify([b"bad"]), "INVALID_ARGUMENT")
        assert server.metric("attnserve_requests_total", model=SECNN, surface="api", code="INVALID_ARGUMENT") == before + 1


def test_stream_of_bad_messages_keeps_going(stub: api_grpc.AttnServeStub) -> None:
    requests = [pb.ClassifyRequest(images=[b"bad"], id="a"), pb.ClassifyRequest(images=[], id="b"),
                pb.ClassifyRequest(images=[GOOD], id="c"), pb.ClassifyRequest(model="nope", images=[GOOD], id="d")]
    replies = {r.id: r for r in stub.ClassifyStream(iter(requests))}
    assert {k: r.error.code for k, r in replies.items()} == {
        "a": "INVALID_ARGUMENT", "b": "INVALID_ARGUMENT", "c": "", "d": "NOT_FOUND"}
    assert len(replies["c"].response.results) == 1


def test_grpc_message_limit_still_applies(server: ServerProcess) -> None:
    """Above --max-message-bytes (64 MiB) gRPC itself refuses, before any decoding."""
    with grpc.insecure_channel(server.url, options=[("grpc.max_send_message_length", 80 << 20)]) as channel:
        stub = api_grpc.AttnServeStub(channel)
        expect_status(lambda: stub.Classify(pb.ClassifyRequest(images=[b"\x00" * (65 << 20)])), "RESOURCE_EXHAUSTED")
