"""The REST codec: JSON tensors and Triton's binary tensor extension <-> numpy, checked against
the model spec with the v2 codec's own checks."""

import json

import numpy as np
import pytest

from service.batching.policy import BatchingPolicy
from service.codec.v2_http import decode_request, encode_response, message_dict
from service.errors import InvalidInput
from service.model_config import ModelSpec, TensorSpec
from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import model_config_pb2 as mc

SPEC = ModelSpec(
    name="m",
    max_batch_size=4,
    inputs=(TensorSpec("image", "FP32", (1, 2, 2)), TensorSpec("label", "INT64", (1,))),
    outputs=(TensorSpec("logits", "FP32", (3,)), TensorSpec("probabilities", "FP32", (3,))),
    policy=BatchingPolicy(max_batch_size=4),
    instance_count=1,
    warmup=(),
)
TYPES = ModelSpec(
    name="t",
    max_batch_size=0,
    inputs=(TensorSpec("flag", "BOOL", (2,)), TensorSpec("half", "FP16", (2,)), TensorSpec("small", "UINT8", (2,))),
    outputs=(TensorSpec("out", "FP32", (2,)),),
    policy=BatchingPolicy(max_batch_size=0),
    instance_count=1,
    warmup=(),
)
LIMIT = 1 << 20
IMAGE = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
LABEL = np.array([[3], [4]], dtype=np.int64)


def body(inputs=None, **extra) -> bytes:
    document = {"inputs": inputs if inputs is not None else [
        {"name": "image", "datatype": "FP32", "shape": [2, 1, 2, 2], "data": IMAGE.ravel().tolist()},
        {"name": "label", "datatype": "INT64", "shape": [2, 1], "data": [[3], [4]]},  # nested
    ], **extra}
    return json.dumps(document).encode()


def binary_body(image=IMAGE, label=LABEL, sizes=None, trailer=b"") -> tuple[bytes, int]:
    sizes = sizes or (image.nbytes, label.nbytes)
    header = json.dumps({"inputs": [
        {"name": "image", "datatype": "FP32", "shape": list(image.shape), "parameters": {"binary_data_size": sizes[0]}},
        {"name": "label", "datatype": "INT64", "shape": list(label.shape), "parameters": {"binary_data_size": sizes[1]}},
    ], "outputs": [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "probabilities"}]}).encode()
    return header + image.tobytes() + label.tobytes() + trailer, len(header)


def test_json_data_flat_and_nested_decode():
    request = decode_request(body(id="r1"), None, SPEC, LIMIT)
    np.testing.assert_array_equal(request.decoded.inputs["image"], IMAGE)
    np.testing.assert_array_equal(request.decoded.inputs["label"], LABEL)
    assert request.decoded.outputs == ("logits", "probabilities")
    assert request.binary_outputs == frozenset() and request.id == "r1"


def test_binary_inputs_are_viewed_and_outputs_chosen_per_output():
    data, length = binary_body()
    request = decode_request(data, length, SPEC, LIMIT)
    np.testing.assert_array_equal(request.decoded.inputs["image"], IMAGE)
    np.testing.assert_array_equal(request.decoded.inputs["label"], LABEL)
    assert request.binary_outputs == {"logits"}


def test_binary_data_output_makes_every_output_binary_unless_an_output_says_otherwise():
    all_binary = decode_request(body(parameters={"binary_data_output": True}), None, SPEC, LIMIT)
    assert all_binary.binary_outputs == {"logits", "probabilities"}
    one_json = decode_request(
        body(parameters={"binary_data_output": True}, outputs=[{"name": "logits", "parameters": {"binary_data": False}}]),
        None, SPEC, LIMIT,
    )
    assert one_json.decoded.outputs == ("logits",) and one_json.binary_outputs == frozenset()


def test_parameters_timeout_and_priority():
    request = decode_request(body(parameters={"timeout": 2500, "priority": 2}), None, SPEC, LIMIT)
    assert request.decoded.timeout_s == pytest.approx(0.0025) and request.decoded.priority == 2


def test_bool_fp16_uint8_from_json():
    data = json.dumps({"inputs": [
        {"name": "flag", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        {"name": "half", "datatype": "FP16", "shape": [2], "data": [0.5, 2]},
        {"name": "small", "datatype": "UINT8", "shape": [2], "data": [0, 255]},
    ]}).encode()
    inputs = decode_request(data, None, TYPES, LIMIT).decoded.inputs
    assert inputs["flag"].dtype == np.bool_ and inputs["flag"].tolist() == [True, False]
    assert inputs["half"].dtype == np.float16 and inputs["half"].tolist() == [0.5, 2.0]
    assert inputs["small"].dtype == np.uint8 and inputs["small"].tolist() == [0, 255]


@pytest.mark.parametrize(
    ("data", "length", "words"),
    [
        (b'{"inputs": [', None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty"),
        (b"\xff\xfe", None, "not valid JSON"),
        (b"[" * 100_000, None, "not valid JSON"),
        (body(), 10_000, "past the body"),
        (body(), -1, "past the body"),
    ],
    ids=["truncated", "not-object", "no-inputs", "not-utf8", "deep-nesting", "header-past-body", "negative-header"],
)
def test_malformed_bodies_are_invalid_input(data, length, words):
    with pytest.raises(InvalidInput, match=words):
        decode_request(data, length, SPEC, LIMIT)


@pytest.mark.parametrize(
    ("tensor", "words"),
    [
        ({"name": "image", "datatype": "FP32", "shape": [2, 1, 2, 2], "data": [1.0] * 7}, "7 values in data, expected 8"),
        ({"name": "image", "datatype": "FP32", "shape": [2, 1, 2, 2], "data": [[1.0, 2.0], [3.0]]}, "regular array"),
        ({"name": "image", "datatype": "FP32", "shape": [2, 1, 2, 2], "data": ["a"] * 8}, "strings"),
        ({"name": "image", "datatype": "FP32", "shape": [2, 1, 2, 2], "data": [True] * 8}, "booleans"),
        ({"name": "image", "datatype": "FP32", "shape": [2, 1, 2, 2], "data": 1.0}, "JSON array"),
        ({"name": "image", "datatype": "FP32", "shape": [2, 1, 2, 2]}, "neither data"),
        ({"name": "image", "datatype": "FP32", "shape": [2, 1, 2, 3], "data": [1.0] * 12}, "expected \\[batch, 1, 2, 2\\]"),
        ({"name": "image", "datatype": "FP64", "shape": [2, 1, 2, 2], "data": [1.0] * 8}, "datatype FP64, expected FP32"),
        ({"name": "image", "datatype": "FP32", "shape": ["2", 1, 2, 2], "data": [1.0] * 8}, "shape must be"),
        ({"name": "nope", "datatype": "FP32", "shape": [1], "data": [1.0]}, "unknown input 'nope'"),
        ({"name": "label", "datatype": "INT64", "shape": [2, 1], "data": [1.5, 2]}, "floats, not INT64"),
        ({"name": "label", "datatype": "INT64", "shape": [2, 1], "data": [2**64, 1]}, "INT64"),
        ({"datatype": "FP32", "shape": [1], "data": [1.0]}, "name must be"),
    ],
    ids=["count", "ragged", "strings", "bools", "scalar", "no-data", "shape", "datatype", "shape-type",
         "unknown", "float-for-int", "int-overflow", "no-name"],
)
def test_bad_json_tensors_name_the_tensor(tensor, words):
    other = {"name": "label", "datatype": "INT64", "shape": [2, 1], "data": [1, 2]}
    inputs = [tensor] if tensor.get("name") == "label" else [tensor, other]
    with pytest.raises(InvalidInput, match=words):
        decode_request(body(inputs), None, SPEC, LIMIT)


def test_binary_size_disagreeing_with_shape_is_invalid_input():
    data, length = binary_body(sizes=(IMAGE.nbytes - 4, LABEL.nbytes + 4))
    with pytest.raises(InvalidInput, match="28 bytes of raw contents, expected 32"):
        decode_request(data, length, SPEC, LIMIT)


def test_binary_size_past_the_body_and_trailing_bytes_are_invalid_input():
    data, length = binary_body(sizes=(IMAGE.nbytes, LABEL.nbytes + 100))
    with pytest.raises(InvalidInput, match="past the"):
        decode_request(data, length, SPEC, LIMIT)
    data, length = binary_body(trailer=b"xx")
    with pytest.raises(InvalidInput, match="2 bytes after the JSON header"):
        decode_request(data, length, SPEC, LIMIT)


def test_missing_input_unknown_output_and_classification_are_invalid_input():
    with pytest.raises(InvalidInput, match="missing inputs \\['label'\\]"):
        decode_request(body([{"name": "image", "datatype": "FP32", "shape": [2, 1, 2, 2], "data": [0.0] * 8}]), None, SPEC, LIMIT)
    with pytest.raises(InvalidInput, match="unknown output 'x'"):
        decode_request(body(outputs=[{"name": "x"}]), None, SPEC, LIMIT)
    with pytest.raises(InvalidInput, match="classification"):
        decode_request(body(outputs=[{"name": "logits", "parameters": {"classification": 2}}]), None, SPEC, LIMIT)


def test_tensor_limit_applies_before_decoding():
    with pytest.raises(InvalidInput, match="exceeds the tensor limit of 16 bytes"):
        decode_request(body(), None, SPEC, 16)


def test_encode_response_json_and_binary():
    outputs = {"logits": np.array([[1.0, 2.0, 3.0]], np.float32), "probabilities": np.array([[0.1, 0.2, 0.7]], np.float32)}
    data, length = encode_response("m", "1", "r1", outputs, ("logits", "probabilities"), frozenset())
    assert length is None
    document = json.loads(data)
    assert document["id"] == "r1" and document["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}

    data, length = encode_response("m", "1", "", outputs, ("logits", "probabilities"), frozenset({"probabilities"}))
    header = json.loads(data[:length])
    assert "id" not in header
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 12}
    np.testing.assert_array_equal(np.frombuffer(data[length:], np.float32), outputs["probabilities"].ravel())


def test_message_dict_writes_64_bit_integers_as_numbers_and_zero_counts():
    config = mc.ModelConfig(name="m", max_batch_size=4)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[-1, 3])
    assert message_dict(config)["input"][0]["dims"] == [-1, 3]
    stats = pb.ModelStatistics(name="m", version="1", inference_count=5)
    stats.inference_stats.success.count = 2
    stats.inference_stats.fail.SetInParent()  # as statistics_proto sets every duration
    document = message_dict(stats)
    assert document["inference_count"] == 5 and document["execution_count"] == 0
    assert document["inference_stats"]["success"] == {"count": 2, "ns": 0}
    assert document["inference_stats"]["fail"] == {"count": 0, "ns": 0}
