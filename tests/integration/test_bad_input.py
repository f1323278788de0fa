"""Every kind of bad request gets its own status and a message naming what is wrong, and the
server goes on serving good requests after each one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.integration.support import (
    ENCODER,
    SAGAN,
    SECNN,
    assert_matches,
    infer_inputs,
    message_of,
    requested,
    sample_inputs,
    spec_of,
    status_of,
)

MiB = 1024 * 1024
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
def still_serves(client: grpcclient.InferenceServerClient, model_repository: Path, reference) -> Callable[[], None]:
    """Call after a bad request: a good request to every model still gets the right answer."""

    def check(c: grpcclient.InferenceServerClient = client) -> None:
        rng = np.random.default_rng(99)
        for model in (SAGAN, SECNN, ENCODER):
            arrays = sample_inputs(model_repository, model, 2, rng)
            assert_matches(c.infer(model, infer_inputs(arrays)), reference.run(model, arrays))

    return check


def _input(name: str, array: np.ndarray, datatype: str | None = None) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(array.shape), datatype or _dtype(array))
    if datatype is None:
        item.set_data_from_numpy(array)
    else:  # a datatype that does not match the bytes: set them raw
        item._raw_content = array.tobytes()  # noqa: SLF001 - deliberately inconsistent input
    return item


def _dtype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


def _good(repo: Path, model: str, rows: int = 1, length: int = 8) -> dict[str, np.ndarray]:
    return sample_inputs(repo, model, rows, np.random.default_rng(7), length=length)


def _raw_mismatch(repo: Path) -> list[grpcclient.InferInput]:
    image = _good(repo, SECNN, rows=2)["image"]
    item = _input("image", image)
    item.set_shape([1, *image.shape[1:]])  # two rows of bytes, one row of shape
    return [item]


# (id, model, inputs builder, requested outputs, status, words the message must contain)
CASES = [
    ("unknown-input-name", SECNN, lambda r: [_input("picture", _good(r, SECNN)["image"])], None,
     "INVALID_ARGUMENT", ["picture"]),
    ("wrong-dtype", SECNN, lambda r: [_input("image", _good(r, SECNN)["image"].astype(np.float64))], None,
     "INVALID_ARGUMENT", ["image", "FP64", "FP32"]),
    ("dtype-label-differs-from-bytes", SAGAN,
     lambda r: [_input("z", _good(r, SAGAN)["z"]), _input("class_label", _good(r, SAGAN)["class_label"], "INT32")],
     None, "INVALID_ARGUMENT", ["class_label", "INT32"]),
    ("rank", SECNN, lambda r: [_input("image", _good(r, SECNN)["image"][:, 0])], None,
     "INVALID_ARGUMENT", ["image", "shape"]),
    ("fixed-dim", SECNN, lambda r: [_input("image", _good(r, SECNN)["image"][..., :27])], None,
     "INVALID_ARGUMENT", ["image", "27"]),
    ("batch-above-max", SECNN, lambda r: [_input("image", _good(r, SECNN, rows=spec_of(r, SECNN).max_batch_size + 1)["image"])],
     None, "INVALID_ARGUMENT", ["image", "max_batch_size"]),
    ("batch-zero", SECNN, lambda r: [_input("image", _good(r, SECNN)["image"][:0])], None,
     "INVALID_ARGUMENT", ["image", "batch size 0"]),
    ("raw-byte-count", SECNN, _raw_mismatch, None, "INVALID_ARGUMENT", ["image", "bytes"]),
    ("missing-input", SAGAN, lambda r: [_input("z", _good(r, SAGAN)["z"])], None,
     "INVALID_ARGUMENT", ["class_label"]),
    ("duplicate-input", SECNN, lambda r: [_input("image", _good(r, SECNN)["image"])] * 2, None,
     "INVALID_ARGUMENT", ["image", "more than once"]),
    ("rows-disagree", SAGAN,
     lambda r: [_input("z", _good(r, SAGAN, rows=2)["z"]), _input("class_label", _good(r, SAGAN, rows=3)["class_label"])],
     None, "INVALID_ARGUMENT", ["batch size"]),
    ("ragged-within-request", ENCODER,
     lambda r: [_input("input_ids", _good(r, ENCODER, length=5)["input_ids"]),
                _input("attention_mask", _good(r, ENCODER, length=6)["attention_mask"])],
     None, "INVALID_ARGUMENT", ["input_ids", "attention_mask"]),
    ("empty-sequence", ENCODER,
     lambda r: [_input(k, v[:, :0]) for k, v in _good(r, ENCODER).items()],
     None, "INVALID_ARGUMENT", ["input_ids"]),
    ("unknown-output", SECNN, lambda r: [_input("image", _good(r, SECNN)["image"])], ["logits", "saliency"],
     "INVALID_ARGUMENT", ["saliency"]),
]


@pytest.mark.parametrize(
    ("model", "build", "outputs", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_tensor(client, model_repository, still_serves, model, build, outputs, status, words) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, build(model_repository), outputs=requested(outputs) if outputs else None)
    assert status_of(caught.value) == status, message_of(caught.value)
    for word in words:
        assert word in message_of(caught.value), message_of(caught.value)
    still_serves()


def test_unknown_model(client, model_repository, still_serves) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("no_such_model", infer_inputs(_good(model_repository, SECNN)))
    assert status_of(caught.value) == "NOT_FOUND"
    assert "no_such_model" in message_of(caught.value)
    still_serves()


def test_unknown_version(client, model_repository, still_serves) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(SECNN, infer_inputs(_good(model_repository, SECNN)), model_version="9")
    assert status_of(caught.value) == "NOT_FOUND"
    assert "9" in message_of(caught.value)
    still_serves()


def test_metadata_of_unknown_model(client, still_serves) -> None:
    for call in (client.get_model_metadata, client.get_model_config):
        with pytest.raises(InferenceServerException) as caught:
            call("no_such_model")
        assert status_of(caught.value) == "NOT_FOUND"
    still_serves()


# -- requests only a hand-built message can make ---------------------------------------------------
def _stub(server: ServerProcess) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.url)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _raw_request(repo: Path) -> pb.ModelInferRequest:
    image = _good(repo, SECNN)["image"]
    request = pb.ModelInferRequest(model_name=SECNN)
    request.inputs.add(name="image", datatype="FP32", shape=list(image.shape))
    request.raw_input_contents.append(image.tobytes())
    return request


def _typed_count_mismatch(repo: Path) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=SECNN)
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    tensor.contents.fp32_contents.extend([0.5] * 100)
    return request


def _raw_and_typed(repo: Path) -> pb.ModelInferRequest:
    request = _raw_request(repo)
    request.inputs[0].contents.fp32_contents.extend([0.5] * 784)
    return request


def _raw_count_mismatch(repo: Path) -> pb.ModelInferRequest:
    request = _raw_request(repo)
    request.raw_input_contents.append(b"\0" * 8)
    return request


def _string_timeout(repo: Path) -> pb.ModelInferRequest:
    request = _raw_request(repo)
    request.parameters["timeout"].string_param = "soon"
    return request


def _negative_timeout(repo: Path) -> pb.ModelInferRequest:
    request = _raw_request(repo)
    request.parameters["timeout"].int64_param = -5
    return request


RAW_CASES = [
    ("typed-value-count", _typed_count_mismatch, ["image", "100"]),
    ("raw-and-typed", _raw_and_typed, ["image", "raw"]),
    ("raw-entries-vs-inputs", _raw_count_mismatch, ["raw_input_contents"]),
    ("timeout-not-integer", _string_timeout, ["timeout"]),
    ("timeout-negative", _negative_timeout, ["timeout"]),
]


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES])
def test_bad_message(server: ServerProcess, model_repository, still_serves, build, words) -> None:
    channel, stub = _stub(server)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(build(model_repository), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    for word in words:
        assert word in caught.value.details()
    still_serves()


def test_unknown_repository_name(server: ServerProcess, still_serves) -> None:
    channel, stub = _stub(server)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="elsewhere"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "elsewhere" in caught.value.details()
    still_serves()


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff\xff", b"\x0a\x80\x80\x80\x80\x10"], ids=["bad-tag", "truncated"])
def test_malformed_protobuf(server: ServerProcess, still_serves, garbage: bytes) -> None:
    """Bytes that are not a ModelInferRequest: grpcio's deserializer refuses them before any
    handler runs (grpcio answers UNKNOWN or INTERNAL, by version), and the server is unharmed."""
    with grpc.insecure_channel(server.url) as channel:
        call = channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as caught:
            call(garbage, timeout=30)
    assert caught.value.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    still_serves()


# -- message size limits ---------------------------------------------------------------------------
@pytest.fixture
def small_server(start_server) -> ServerProcess:
    return start_server("--max-message-bytes", str(4 * MiB), "--load-model", ENCODER, "--load-model", SECNN)


def test_request_above_message_limit(small_server: ServerProcess, model_repository, reference) -> None:
    # A well-formed request that is simply too big: 32 sequences of 10,000 tokens, ~5 MB.
    arrays = sample_inputs(model_repository, ENCODER, 32, np.random.default_rng(8), length=10_000)
    assert sum(a.nbytes for a in arrays.values()) > 4 * MiB
    with grpcclient.InferenceServerClient(small_server.url) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(ENCODER, infer_inputs(arrays), outputs=requested(["logits"]))
        assert status_of(caught.value) == "RESOURCE_EXHAUSTED"
        good = sample_inputs(model_repository, SECNN, 4, np.random.default_rng(9))
        assert_matches(client.infer(SECNN, infer_inputs(good)), reference.run(SECNN, good))


def test_response_above_message_limit(small_server: ServerProcess, model_repository, reference) -> None:
    # A small request (64 KiB) whose answer is not: 32 attention maps of 4 x 128 x 128 are 8 MiB.
    arrays = sample_inputs(model_repository, ENCODER, 32, np.random.default_rng(10), length=128)
    with grpcclient.InferenceServerClient(small_server.url) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(ENCODER, infer_inputs(arrays))
        assert status_of(caught.value) == "RESOURCE_EXHAUSTED"
        # Asking only for the small outputs is fine.
        result = client.infer(ENCODER, infer_inputs(arrays), outputs=requested(["embedding", "logits"]))
        assert_matches(result, reference.run(ENCODER, arrays), ["embedding", "logits"])


# -- values only the graph could otherwise check -----------------------------------------------------
# The config declares them (parameter attnserve.input_limits): ids within the vocabulary,
# labels within the classes, sequences within the position table. Without the check they
# would fail inside onnxruntime, as INTERNAL, for every request of the batch.
def _limits(repo: Path, model: str, name: str):
    tensor = spec_of(repo, model).input(name)
    assert tensor is not None and (tensor.max_value is not None or tensor.max_dims), f"{model}.{name} declares no limits"
    return tensor


def _label(repo: Path, value: int) -> dict[str, np.ndarray]:
    arrays = _good(repo, SAGAN, rows=3)
    arrays["class_label"][1] = value
    return arrays


def _token(repo: Path, name: str, value: int) -> dict[str, np.ndarray]:
    arrays = _good(repo, ENCODER, rows=2)
    arrays[name][1, 3] = value
    return arrays


OUT_OF_RANGE = [
    ("label-above", SAGAN, "class_label", lambda r: _label(r, int(_limits(r, SAGAN, "class_label").max_value) + 1)),
    ("label-negative", SAGAN, "class_label", lambda r: _label(r, -1)),
    ("token-outside-vocabulary", ENCODER, "input_ids",
     lambda r: _token(r, "input_ids", int(_limits(r, ENCODER, "input_ids").max_value) + 1)),
    ("mask-not-0-or-1", ENCODER, "attention_mask",
     lambda r: _token(r, "attention_mask", int(_limits(r, ENCODER, "attention_mask").max_value) + 1)),
    ("sequence-too-long", ENCODER, "input_ids",
     lambda r: _good(r, ENCODER, length=_limits(r, ENCODER, "input_ids").max_dims[0] + 1)),
]


@pytest.mark.parametrize(
    ("model", "word", "build"), [c[1:] for c in OUT_OF_RANGE], ids=[c[0] for c in OUT_OF_RANGE]
)
def test_value_outside_declared_limits(client, model_repository, still_serves, model, word, build) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, infer_inputs(build(model_repository)))
    assert status_of(caught.value) == "INVALID_ARGUMENT", message_of(caught.value)
    assert word in message_of(caught.value)
    still_serves()


def test_values_at_the_limits_are_served(client, model_repository, reference) -> None:
    labels = _good(model_repository, SAGAN, rows=2)
    label = _limits(model_repository, SAGAN, "class_label")
    labels["class_label"][:, 0] = [label.min_value, label.max_value]
    longest = _limits(model_repository, ENCODER, "input_ids").max_dims[0]
    tokens = _good(model_repository, ENCODER, rows=1, length=longest)
    tokens["input_ids"][0, 1] = _limits(model_repository, ENCODER, "input_ids").max_value
    for model, arrays in ((SAGAN, labels), (ENCODER, tokens)):
        assert_matches(client.infer(model, infer_inputs(arrays)), reference.run(model, arrays))
