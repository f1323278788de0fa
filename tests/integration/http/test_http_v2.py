"""KServe v2 over HTTP/REST through Triton's own clients (tritonclient.http, sync and aio), curl
and plain http.client: every endpoint, JSON and binary tensors both ways, the errors, metrics.

The shared server serves gRPC and HTTP from one process; answers are checked against the
in-process reference (the same model.onnx run by onnxruntime here) and against what gRPC says.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests.conftest import ServerProcess
from tests.integration.http.conftest import address
from tests.integration.support import ENCODER, MODELS, SAGAN, SECNN, Reference, assert_matches, infer_inputs, sample_inputs

TIMEOUT_S = 60


def http_inputs(arrays, module=httpclient, binary=True):
    inputs = []
    for name, array in arrays.items():
        item = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        item.set_data_from_numpy(array, binary_data=binary)
        inputs.append(item)
    return inputs


def raw(server: ServerProcess, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """(status, parsed JSON or None, headers) of one plain HTTP/1.1 exchange."""
    host, port = address(server).rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        data = reply.read()
        document = json.loads(data) if data and reply.getheader("Content-Type", "").startswith("application/json") else None
        return reply.status, document, dict(reply.getheaders())
    finally:
        conn.close()


# -- health, metadata, configuration, repository -------------------------------------------------
def test_health_and_server_metadata_match_grpc(http_client, client) -> None:
    assert http_client.is_server_live() and http_client.is_server_ready()
    metadata = http_client.get_server_metadata()
    grpc_metadata = client.get_server_metadata()
    assert metadata["name"] == grpc_metadata.name and metadata["version"] == grpc_metadata.version
    assert metadata["extensions"] == list(grpc_metadata.extensions)


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_readiness_and_config_match_grpc(http_client, client, model) -> None:
    for version in ("", "1"):
        metadata = http_client.get_model_metadata(model, version)
        want = client.get_model_metadata(model, version)
        assert metadata["name"] == model and metadata["versions"] == list(want.versions)
        assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
            (t.name, t.datatype, list(t.shape)) for t in want.inputs
        ]
        assert [t["name"] for t in metadata["outputs"]] == [t.name for t in want.outputs]
        assert http_client.is_model_ready(model, version)
    config = http_client.get_model_config(model)
    grpc_config = client.get_model_config(model).config
    assert config["name"] == model and config["max_batch_size"] == grpc_config.max_batch_size
    # 64-bit integers are JSON numbers, as Triton writes them (perf_analyzer reads them).
    assert [i["dims"] for i in config["input"]] == [list(i.dims) for i in grpc_config.input]
    assert not http_client.is_model_ready(model, "7")


def test_repository_index_matches_grpc(http_client, client) -> None:
    rows = {(r["name"], r["version"], r["state"]) for r in http_client.get_model_repository_index()}
    want = {(r.name, r.version, r.state) for r in client.get_model_repository_index().models}
    assert rows == want and len(rows) >= len(MODELS)


# -- inference -------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)],
                         ids=["binary", "json", "binary-in", "binary-out"])
def test_infer_matches_the_reference(http_client, reference: Reference, model_repository: Path, model, binary_in, binary_out) -> None:
    rng = np.random.default_rng(16)
    arrays = sample_inputs(model_repository, model, 2, rng)
    expected = reference.run(model, arrays)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary_out) for name in expected]
    result = http_client.infer(model, http_inputs(arrays, binary=binary_in), outputs=outputs, request_id="r-16")
    assert_matches(result, expected)
    response = result.get_response()
    assert response["id"] == "r-16" and response["model_name"] == model and response["model_version"] == "1"


def test_infer_without_outputs_returns_all_as_json(http_client, reference: Reference, model_repository: Path) -> None:
    arrays = sample_inputs(model_repository, SECNN, 1, np.random.default_rng(3))
    result = http_client.infer(SECNN, http_inputs(arrays, binary=False))
    assert_matches(result, reference.run(SECNN, arrays))


async def test_aio_client_binary_and_json(aio_http_client, reference: Reference, model_repository: Path) -> None:
    arrays = sample_inputs(model_repository, ENCODER, 1, np.random.default_rng(5), length=9)
    expected = reference.run(ENCODER, arrays)
    assert await aio_http_client.is_server_ready()
    for binary in (True, False):
        outputs = [aiohttpclient.InferRequestedOutput(n, binary_data=binary) for n in expected]
        result = await aio_http_client.infer(ENCODER, http_inputs(arrays, aiohttpclient, binary), outputs=outputs)
        assert_matches(result, expected)
    stats = await aio_http_client.get_inference_statistics(ENCODER)
    assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= 2


def test_statistics_count_http_requests(http_client, model_repository: Path) -> None:
    def success() -> int:
        (stats,) = http_client.get_inference_statistics(SAGAN)["model_stats"]
        return stats["inference_stats"]["success"]["count"]

    before = success()
    arrays = sample_inputs(model_repository, SAGAN, 1, np.random.default_rng(7))
    http_client.infer(SAGAN, http_inputs(arrays))
    assert success() == before + 1
    every = http_client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} >= set(MODELS)


def test_requests_are_counted_per_protocol(server: ServerProcess, http_client, client, model_repository: Path) -> None:
    labels = {"model": SECNN, "surface": "v2", "code": "OK"}
    before = {p: server.metric("attnserve_requests_total", protocol=p, **labels) for p in ("grpc", "http")}
    arrays = sample_inputs(model_repository, SECNN, 1, np.random.default_rng(9))
    http_client.infer(SECNN, http_inputs(arrays))
    http_client.infer(SECNN, http_inputs(arrays))
    client.infer(SECNN, infer_inputs(arrays))
    assert server.metric("attnserve_requests_total", protocol="http", **labels) == before["http"] + 2
    assert server.metric("attnserve_requests_total", protocol="grpc", **labels) == before["grpc"] + 1
    assert server.metric("attnserve_request_duration_seconds_count", model=SECNN, protocol="http") >= 2


# -- errors: a clear status and message, and the server keeps serving ----------------------------
def test_client_errors_through_tritonclient(http_client, model_repository: Path) -> None:
    arrays = sample_inputs(model_repository, SECNN, 1, np.random.default_rng(1))
    with pytest.raises(InferenceServerException) as missing:
        http_client.infer("no_such_model", http_inputs(arrays))
    assert missing.value.status() == "404" and "unknown model 'no_such_model'" in missing.value.message()
    bad = httpclient.InferInput("image", [1, 1, 28, 27], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 1, 28, 27), np.float32))
    with pytest.raises(InferenceServerException) as shape:
        http_client.infer(SECNN, [bad])
    assert shape.value.status() == "400" and "expected [batch, 1, 28, 28]" in shape.value.message()
    with pytest.raises(InferenceServerException) as version:
        http_client.get_model_metadata(SECNN, "9")
    assert version.value.status() == "404"
    assert http_client.is_server_ready()


@pytest.mark.parametrize(
    ("body", "headers", "words"),
    [
        (b'{"inputs": [{"name": "image"', {}, "not valid JSON"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, "past the body"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "many"}, "byte count"),
        (json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 10}]}).encode(),
         {}, "10 values in data, expected 784"),
    ],
    ids=["malformed-json", "header-past-body", "header-not-a-number", "size-vs-shape"],
)
def test_malformed_bodies_get_400_and_the_server_serves_on(server: ServerProcess, http_client, body, headers, words) -> None:
    status, document, _ = raw(server, "POST", f"/v2/models/{SECNN}/infer", body, headers)
    assert status == 400 and words in document["error"], document
    assert http_client.is_server_ready()


def test_binary_size_disagreeing_with_shape_gets_400(server: ServerProcess) -> None:
    header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                     "parameters": {"binary_data_size": 100}}]}).encode()
    status, document, _ = raw(server, "POST", f"/v2/models/{SECNN}/infer", header + bytes(100),
                              {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "100 bytes of raw contents, expected 3136" in document["error"]


def test_body_over_the_limit_is_refused_from_content_length(server: ServerProcess, http_client) -> None:
    """413 before a byte of the body is sent: the server reads the header only."""
    host, port = address(server).rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    try:
        conn.putrequest("POST", f"/v2/models/{SECNN}/infer")
        conn.putheader("Content-Length", str(2**40))
        conn.endheaders()
        reply = conn.getresponse()
        assert reply.status == 413 and "larger than the limit" in json.loads(reply.read())["error"]
    finally:
        conn.close()
    assert http_client.is_server_live()


def test_routes_and_methods(server: ServerProcess) -> None:
    status, document, _ = raw(server, "GET", "/v2/nothing/here")
    assert status == 404 and "no route" in document["error"]
    status, document, headers = raw(server, "GET", f"/v2/models/{SECNN}/infer")
    assert status == 405 and headers.get("Allow") == "POST"
    status, document, _ = raw(server, "POST", "/v2/repository/index", b'{"ready": "yes"}')
    assert status == 400 and "'ready'" in document["error"]


# -- curl, as an operator would --------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (apt-get install curl)")
def test_curl_health_and_json_infer(server: ServerProcess, reference: Reference, model_repository: Path) -> None:
    base = server.http_url
    live = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/v2/health/ready"],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert live.stdout == "200", live.stderr
    arrays = sample_inputs(model_repository, SECNN, 1, np.random.default_rng(11))
    request = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": arrays["image"].ravel().tolist()}],
               "outputs": [{"name": "probabilities"}]}
    done = subprocess.run(
        ["curl", "-sf", "-H", "Content-Type: application/json", "--data-binary", "@-", f"{base}/v2/models/{SECNN}/infer"],
        input=json.dumps(request), capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    (output,) = json.loads(done.stdout)["outputs"]
    got = np.array(output["data"], np.float32).reshape(output["shape"])
    np.testing.assert_allclose(got, reference.run(SECNN, arrays)["probabilities"], rtol=1e-4, atol=1e-5)
