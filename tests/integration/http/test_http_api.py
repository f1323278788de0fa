"""The attnserve API's REST routes: the same answers as its gRPC service, from curl and JSON.

An uploaded PNG/JPEG is classified (``curl -F image=@digit.png``), a seed generates the same PNG
as over gRPC, text is encoded; bad forms and bodies get a 400 with a JSON error."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import urllib3
import pytest
from google.protobuf import json_format

from service.codec.v2_http import message_dict
from service.proto.attnserve.v1 import attnserve_pb2 as pb
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_grpc
from tests.conftest import ServerProcess
from tests.integration.api.helpers import digits, jpeg, png

TIMEOUT_S = 120


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[api_grpc.AttnServeStub]:
    with grpc.insecure_channel(server.url) as channel:
        yield api_grpc.AttnServeStub(channel)


def post(server: ServerProcess, path: str, body: bytes, content_type: str = "application/json", accept: str = "") -> tuple[int, bytes, dict]:
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    request = urllib.request.Request(server.http_url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            return reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def as_dict(message) -> dict:
    """The gRPC answer as the REST route writes it (the codec's message_dict)."""
    return message_dict(message)


def close_to(a, b, tol: float = 1e-5) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close_to(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close_to(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= tol
    return a == b


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (apt-get install curl)")
def test_classify_uploaded_files_with_curl(server: ServerProcess, stub, tmp_path: Path) -> None:
    images = [png(digits(1, seed=3)[0]), jpeg(digits(1, seed=4)[0])]
    files = [tmp_path / "digit.png", tmp_path / "digit.jpg"]
    for path, data in zip(files, images):
        path.write_bytes(data)
    done = subprocess.run(
        ["curl", "-s", "-F", f"image=@{files[0]}", "-F", f"image=@{files[1]}", "-F", "top_k=3", "-F", "channel_weights=true",
         f"{server.http_url}/v1/classify"],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    answer = json.loads(done.stdout)
    want = stub.Classify(pb.ClassifyRequest(images=images, top_k=3, channel_weights=True), timeout=TIMEOUT_S)
    assert close_to(answer, as_dict(want)), (answer, as_dict(want))
    assert [len(r["labels"]) for r in answer["results"]] == [3, 3]


def test_vision_extras_over_rest_equal_the_grpc_answer(server: ServerProcess, stub) -> None:
    """CBAM's maps from a form upload, the STN's crop and SASA's windows from JSON bodies."""
    image = png(digits(1, seed=6)[0])
    fields = {"model": "cbam_classifier", "spatial_attention": "true", "image": ("d.png", image, "image/png")}
    body, content_type = urllib3.encode_multipart_formdata(fields)
    status, answer, _ = post(server, "/v1/classify", body, content_type=content_type)
    want = stub.Classify(pb.ClassifyRequest(model="cbam_classifier", images=[image], spatial_attention=True), timeout=TIMEOUT_S)
    assert status == 200 and close_to(json.loads(answer), as_dict(want))
    assert len(json.loads(answer)["results"][0]["spatial_attention"]) == 3
    for model, extra in (("stn_classifier", {"transform": True}), ("sasa_classifier", {"attention": {"queries": [{"y": 3, "x": 5}]}})):
        document = {"model": model, "images": [base64.b64encode(image).decode()], **extra}
        status, answer, _ = post(server, "/v1/classify", json.dumps(document).encode())
        request = pb.ClassifyRequest(model=model, images=[image])
        json_format.ParseDict(extra, request)
        assert status == 200 and close_to(json.loads(answer), as_dict(stub.Classify(request, timeout=TIMEOUT_S)))


def test_classify_json_body_with_base64_images(server: ServerProcess, stub) -> None:
    image = png(digits(1, seed=5)[0])
    status, body, _ = post(server, "/v1/classify", json.dumps({"images": [base64.b64encode(image).decode()], "id": "c1"}).encode())
    assert status == 200
    answer = json.loads(body)
    assert answer["id"] == "c1"
    assert close_to(answer, as_dict(stub.Classify(pb.ClassifyRequest(images=[image], id="c1"), timeout=TIMEOUT_S)))


def test_generate_png_is_the_grpc_image_for_the_seed(server: ServerProcess, stub) -> None:
    status, body, headers = post(server, "/v1/generate", json.dumps({"seed": 11, "class_ids": [3]}).encode(), accept="image/png")
    assert status == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")
    want = stub.Generate(pb.GenerateRequest(seed=11, class_ids=[3]), timeout=TIMEOUT_S)
    assert body == want.images[0].png
    assert headers["X-Attnserve-Seed"] == "11" and headers["X-Attnserve-Class"].startswith("3")
    status, body, _ = post(server, "/v1/generate?format=png", b"")  # an empty body: a drawn seed
    assert status == 200 and body.startswith(b"\x89PNG")
    status, body, _ = post(server, "/v1/generate", json.dumps({"seed": 11, "class_ids": [3], "count": 2}).encode())
    answer = json.loads(body)
    assert status == 200 and base64.b64decode(answer["images"][0]["png"]) == want.images[0].png
    assert answer["seed"] == 11 and len(answer["images"]) == 2


def test_encode_text_matches_grpc(server: ServerProcess, stub) -> None:
    request = {"sequences": [{"text": "attention is all you need"}, {"ids": {"ids": [1, 80, 81, 2]}}], "top_k": 2}
    status, body, _ = post(server, "/v1/encode", json.dumps(request).encode())
    assert status == 200
    want = stub.Encode(json_format.ParseDict(request, pb.EncodeRequest()), timeout=TIMEOUT_S)
    assert close_to(json.loads(body), as_dict(want))


@pytest.mark.parametrize(
    ("path", "body", "content_type", "words"),
    [
        ("/v1/classify", b'{"imgs": []}', "application/json", "not a valid ClassifyRequest"),
        ("/v1/classify", b"{}", "application/json", "no images"),
        ("/v1/classify", json.dumps({"images": [base64.b64encode(b"not an image").decode()]}).encode(), "application/json", "images[0]"),
        ("/v1/encode", b'{"sequences": [{}]}', "application/json", "set ids or text"),
        ("/v1/encode", b"[1]", "application/json", "JSON EncodeRequest"),
        ("/v1/generate", b'{"count": 0}', "application/json", ""),
        ("/v1/classify", b"--x\r\nContent-Disposition: form-data; name=\"bogus\"\r\n\r\n1\r\n--x--\r\n",
         "multipart/form-data; boundary=x", "unknown form fields ['bogus']"),
    ],
    ids=["unknown-field", "no-images", "not-an-image", "empty-sequence", "not-an-object", "zero-count", "bad-form"],
)
def test_bad_api_requests_get_400(server: ServerProcess, path, body, content_type, words) -> None:
    status, reply, _ = post(server, path, body, content_type)
    assert status == 400, reply
    assert words in json.loads(reply)["error"]


def test_api_requests_are_counted_per_protocol(server: ServerProcess) -> None:
    labels = {"model": "transformer_encoder", "surface": "api", "protocol": "http", "code": "OK"}
    before = server.metric("attnserve_requests_total", **labels)
    assert post(server, "/v1/encode", b'{"sequences": [{"text": "hi"}]}')[0] == 200
    assert server.metric("attnserve_requests_total", **labels) == before + 1
