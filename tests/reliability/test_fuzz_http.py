"""Fuzzing the REST infer endpoint: JSON bodies (valid ones mutated field by field, and arbitrary
JSON), with and without binary tensors, against the shared server.

Every answer is 200, or a client error (400, 404, 413, 429, 503) with a short JSON
``{"error": "..."}``; never 500, never a hang (every exchange has a timeout), and the server
serves a valid request afterwards.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ServerProcess
from tests.integration.support import ENCODER, MODELS, SAGAN, SECNN, sample_inputs
from tests.reliability.fuzzing import CALL_TIMEOUT_S, FUZZ, odd_floats, odd_ints, odd_text

CLIENT_STATUSES = {400, 404, 413, 429, 503}
HEADER = "Inference-Header-Content-Length"
json_values = st.recursive(
    st.none() | st.booleans() | odd_ints | odd_floats.filter(lambda f: f == f and abs(f) != float("inf")) | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)


class Endpoint:
    """One keep-alive connection to the REST port; reopened after the server closes it."""

    def __init__(self, server: ServerProcess) -> None:
        host, port = server.http_url.split("://", 1)[1].rsplit(":", 1)
        self._where = (host, int(port))
        self._conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(*self._where, timeout=CALL_TIMEOUT_S)
        try:
            self._conn.request("POST", path, body=body, headers=headers)
            reply = self._conn.getresponse()
            data = reply.read()
            if reply.getheader("Connection", "").lower() == "close":
                self.close()
            return reply.status, data, reply.getheader("Content-Type", "")
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@pytest.fixture(scope="module")
def endpoint(server: ServerProcess) -> Iterator[Endpoint]:
    e = Endpoint(server)
    yield e
    e.close()


def valid_document(repository, model: str, seed: int) -> dict[str, Any]:
    arrays = sample_inputs(repository, model, 1 + seed % 2, np.random.default_rng(seed), length=4 + seed % 5)
    return {"inputs": [{"name": n, "datatype": {"float32": "FP32", "int64": "INT64"}[str(a.dtype)],
                        "shape": list(a.shape), "data": a.ravel().tolist()} for n, a in arrays.items()]}


def check(status: int, data: bytes, content_type: str, seen: Counter, what: str) -> None:
    seen[f"{what}:{status}"] += 1
    if status == 200:
        if content_type.startswith("application/json"):
            assert "outputs" in json.loads(data)
        return
    assert status in CLIENT_STATUSES, f"{what}: {status} {data[:500]!r}"
    message = json.loads(data)["error"]
    assert message.strip() and "Traceback" not in message and len(message) <= 2000, message


@given(data=st.data())
@FUZZ
def test_infer_json_fuzz(data, endpoint: Endpoint, model_repository, outcomes) -> None:
    model = data.draw(st.sampled_from(MODELS), "model")
    document = valid_document(model_repository, model, data.draw(st.integers(0, 50), "seed"))
    mutation = data.draw(st.sampled_from(["field", "tensor", "outputs", "parameters", "whole", "bytes", "none"]), "mutation")
    tensor = data.draw(st.sampled_from(document["inputs"]), "tensor")
    if mutation == "field":
        key = data.draw(st.sampled_from(["name", "datatype", "shape", "data", "parameters"]))
        tensor[key] = data.draw(json_values, key)
    elif mutation == "tensor":
        tensor["shape"] = data.draw(st.lists(odd_ints, max_size=4), "shape")
        if data.draw(st.booleans(), "nested"):
            tensor["data"] = [tensor["data"]]
    elif mutation == "outputs":
        document["outputs"] = data.draw(st.lists(st.fixed_dictionaries(
            {"name": odd_text | st.sampled_from(["logits", "probabilities", "image", "embedding"])},
            optional={"parameters": st.dictionaries(st.sampled_from(["binary_data", "classification"]), json_values)},
        ), max_size=3), "outputs")
    elif mutation == "parameters":
        document["parameters"] = data.draw(st.dictionaries(
            st.sampled_from(["timeout", "priority", "binary_data_output", "other"]), json_values, max_size=3), "params")
    elif mutation == "whole":
        document = data.draw(json_values, "document")
    body = json.dumps(document).encode()
    if mutation == "bytes":
        body = data.draw(st.binary(max_size=64), "body") + body[: data.draw(st.integers(0, len(body)))]
    status, reply, content_type = endpoint.post(f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    check(status, reply, content_type, outcomes, f"json-{mutation}")


@given(data=st.data())
@FUZZ
def test_infer_binary_fuzz(data, endpoint: Endpoint, model_repository, outcomes) -> None:
    """Binary tensors after the JSON header, with header lengths and sizes that may lie."""
    model = data.draw(st.sampled_from([SECNN, ENCODER, SAGAN]), "model")
    rows = data.draw(st.integers(1, 2), "rows")
    arrays = sample_inputs(model_repository, model, rows, np.random.default_rng(rows), length=6)
    blobs = [a.tobytes() for a in arrays.values()]
    sizes = [data.draw(st.sampled_from([len(b), len(b) - 1, len(b) + 8, 0, -1]) | odd_ints, "size") for b in blobs]
    header = json.dumps({"inputs": [
        {"name": n, "datatype": {"float32": "FP32", "int64": "INT64"}[str(a.dtype)], "shape": list(a.shape),
         "parameters": {"binary_data_size": s}} for (n, a), s in zip(arrays.items(), sizes)
    ], "parameters": {"binary_data_output": data.draw(st.booleans(), "binary_out")}}).encode()
    body = header + b"".join(blobs)
    length = data.draw(st.sampled_from([len(header), len(header) - 1, len(header) + 3, len(body) + 1, 0]), "length")
    status, reply, content_type = endpoint.post(
        f"/v2/models/{model}/infer", body, {HEADER: str(length), "Content-Type": "application/octet-stream"}
    )
    if status == 200:  # only an honest header length and sizes get here
        assert length == len(header) and sizes == [len(b) for b in blobs], (length, sizes)
    check(status, reply, content_type, outcomes, "binary")


def test_still_serves_after_fuzzing(endpoint: Endpoint, model_repository) -> None:
    body = json.dumps(valid_document(model_repository, SECNN, 1)).encode()
    status, reply, _ = endpoint.post(f"/v2/models/{SECNN}/infer", body, {"Content-Type": "application/json"})
    assert status == 200 and json.loads(reply)["outputs"]
