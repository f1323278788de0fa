"""The v2 codec: protobuf tensors <-> numpy, checked against the model spec."""

import numpy as np
import pytest

from service.batching.policy import BatchingPolicy
from service.codec.v2 import decode_request, encode_response, encode_response_bytes, serialize_response, stream_response_bytes
from service.errors import InvalidInput
from service.model_config import ModelSpec, TensorSpec
from service.proto.inference import grpc_service_pb2 as pb

SPEC = ModelSpec(
    name="m",
    max_batch_size=4,
    inputs=(TensorSpec("image", "FP32", (1, 2, 2)), TensorSpec("label", "INT64", (1,))),
    outputs=(TensorSpec("logits", "FP32", (3,)), TensorSpec("probabilities", "FP32", (3,))),
    policy=BatchingPolicy(max_batch_size=4),
    instance_count=1,
    warmup=(),
)
LIMIT = 1 << 20


def request(rows=2, raw=True, image=None, label=None, **kw):
    image = np.arange(rows * 4, dtype=np.float32).reshape(rows, 1, 2, 2) if image is None else image
    label = np.arange(rows, dtype=np.int64).reshape(rows, 1) if label is None else label
    req = pb.ModelInferRequest(model_name="m", id="req-7", **kw)
    req.inputs.add(name="image", datatype="FP32", shape=image.shape)
    req.inputs.add(name="label", datatype="INT64", shape=label.shape)
    if raw:
        req.raw_input_contents.extend([image.tobytes(), label.tobytes()])
    else:
        req.inputs[0].contents.fp32_contents.extend(image.ravel().tolist())
        req.inputs[1].contents.int64_contents.extend(label.ravel().tolist())
    return req


@pytest.mark.parametrize("raw", [True, False])
def test_raw_and_typed_contents_decode_to_the_same_arrays(raw):
    decoded = decode_request(request(raw=raw), SPEC, LIMIT)
    np.testing.assert_array_equal(decoded.inputs["image"], np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2))
    assert decoded.inputs["label"].dtype == np.int64
    assert decoded.outputs == ("logits", "probabilities")
    assert decoded.timeout_s is None and decoded.priority is None


def test_requested_outputs_and_parameters():
    req = request()
    req.outputs.add(name="probabilities")
    req.parameters["timeout"].int64_param = 2500
    req.parameters["priority"].uint64_param = 1
    decoded = decode_request(req, SPEC, LIMIT)
    assert decoded.outputs == ("probabilities",)
    assert decoded.timeout_s == pytest.approx(0.0025) and decoded.priority == 1


def bad(mutate):
    req = request()
    mutate(req)
    return req


@pytest.mark.parametrize(
    "req, fragment",
    [
        (bad(lambda r: setattr(r.inputs[0], "name", "img")), "unknown input 'img'"),
        (bad(lambda r: setattr(r.inputs[0], "datatype", "FP64")), "'image' has datatype FP64, expected FP32"),
        (bad(lambda r: r.inputs[0].shape.__delitem__(slice(None))), "'image' has shape"),
        (bad(lambda r: r.inputs[0].shape.__setitem__(2, 3)), "'image' has shape"),
        (bad(lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 5)), "5 bytes of raw contents, expected 32"),
        (bad(lambda r: r.raw_input_contents.pop()), "raw_input_contents has 1 entries for 2 inputs"),
        (bad(lambda r: r.outputs.add(name="nope")), "unknown output 'nope'"),
        (bad(lambda r: r.inputs[0].contents.fp32_contents.append(1.0)), "both raw and typed"),
        (bad(lambda r: r.parameters["timeout"].MergeFrom(pb.InferParameter(string_param="x"))), "must be an integer"),
        (request(rows=5), "batch size 5, above max_batch_size 4"),
        (request(rows=0), "batch size 0"),
        (request(rows=2, label=np.zeros((3, 1), np.int64)), "disagree on batch size"),
    ],
)
def test_bad_requests_name_the_tensor_and_the_expectation(req, fragment):
    with pytest.raises(InvalidInput, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        decode_request(req, SPEC, LIMIT)


def test_missing_and_duplicate_inputs():
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="image", datatype="FP32", shape=[1, 1, 2, 2]).contents.fp32_contents.extend([0.0] * 4)
    with pytest.raises(InvalidInput, match="missing inputs \\['label'\\]"):
        decode_request(req, SPEC, LIMIT)
    req.inputs.add().CopyFrom(req.inputs[0])
    with pytest.raises(InvalidInput, match="more than once"):
        decode_request(req, SPEC, LIMIT)


def test_tensor_size_limit_is_checked_before_reading_contents():
    req = request()
    req.inputs[0].shape[:] = [4, 1, 2, 2]
    with pytest.raises(InvalidInput, match="exceeds the tensor limit"):
        decode_request(req, SPEC, 16)


def test_encode_puts_outputs_in_raw_contents_with_the_request_id():
    outputs = {"logits": np.ones((2, 3), np.float32), "probabilities": np.full((2, 3), 0.5, np.float32)}
    resp = encode_response(request(), "m", "1", outputs, ("probabilities",))
    assert (resp.model_name, resp.model_version, resp.id) == ("m", "1", "req-7")
    assert [o.name for o in resp.outputs] == ["probabilities"]
    assert list(resp.outputs[0].shape) == [2, 3] and resp.outputs[0].datatype == "FP32"
    np.testing.assert_array_equal(np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(2, 3), outputs["probabilities"])


def test_declared_input_limits_refuse_out_of_range_values_and_long_dims():
    from dataclasses import replace

    ids = TensorSpec("ids", "INT64", (-1,), min_value=0, max_value=259, max_dims=(8,))
    spec = replace(SPEC, inputs=(ids,))

    def req(values):
        arr = np.asarray([values], dtype=np.int64)
        r = pb.ModelInferRequest(model_name="m")
        r.inputs.add(name="ids", datatype="INT64", shape=arr.shape)
        r.raw_input_contents.append(arr.tobytes())
        return r

    assert decode_request(req([0, 259, 7]), spec, LIMIT).inputs["ids"].shape == (1, 3)
    with pytest.raises(InvalidInput, match=r"'ids' has values in \[0, 260\]"):
        decode_request(req([0, 260]), spec, LIMIT)
    with pytest.raises(InvalidInput, match="at most \\[8\\]"):
        decode_request(req(list(range(9))), spec, LIMIT)


@pytest.mark.parametrize(
    "outputs",
    [
        {"probabilities": np.linspace(0, 1, 10, dtype=np.float32).reshape(1, 10)},
        # a transposed view (not C-ordered), int64 and bool, a 0-d and an empty array
        {"ids": np.arange(6, dtype=np.int64).reshape(2, 3).T, "flag": np.array(True), "none": np.zeros((0, 4), np.float32)},
        # 70,000 bytes: the length takes three varint bytes
        {"attention": np.random.default_rng(0).standard_normal((1, 250, 70), dtype=np.float32)},
    ],
)
def test_the_bytes_form_of_a_response_is_the_serialized_message(outputs: dict) -> None:
    request = pb.ModelInferRequest(model_name="m", id="req-7")
    names = tuple(outputs)
    wire = encode_response_bytes(request, "m", "3", outputs, names)
    assert wire == encode_response(request, "m", "3", outputs, names).SerializeToString()
    parsed = pb.ModelInferResponse.FromString(wire)
    for i, name in enumerate(names):
        expected = np.ascontiguousarray(outputs[name])
        assert parsed.outputs[i].name == name and list(parsed.outputs[i].shape) == list(expected.shape)
        got = np.frombuffer(parsed.raw_output_contents[i], dtype=expected.dtype).reshape(expected.shape)
        np.testing.assert_array_equal(got, expected)


def test_the_response_serializer_passes_bytes_and_serializes_messages() -> None:
    message = pb.ModelInferResponse(model_name="m", id="x")
    assert serialize_response(message) == message.SerializeToString()
    assert serialize_response(b"\x0a\x01m") == b"\x0a\x01m"


@pytest.mark.parametrize("size", [0, 100, 70_000])
def test_a_stream_answer_in_bytes_is_the_serialized_nested_message(size: int) -> None:
    request = pb.ModelInferRequest(model_name="m", id="s-1")
    outputs = {"x": np.arange(size // 4, dtype=np.float32)} if size else {}
    inner = encode_response_bytes(request, "m", "1", outputs, tuple(outputs))
    nested = pb.ModelStreamInferResponse(infer_response=encode_response(request, "m", "1", outputs, tuple(outputs)))
    assert stream_response_bytes(inner) == nested.SerializeToString()
