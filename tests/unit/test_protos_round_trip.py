"""Round trips: every top-level message, fully populated, crosses to Triton's classes and back
(bytes and text); tritonclient talks to the generated servicer; config.pbtxt text parses and
prints as Triton's does.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as triton_model_config
from tritonclient.grpc import service_pb2 as triton_service

from service.proto.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2
from tests.unit.proto_descriptors import OURS, top_level_messages


def populate(message: Message, depth: int = 0) -> Message:
    """Set every field (first member of each oneof) to a non-default value."""
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.fields[0] is not field:
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            entry = field.message_type
            key = sample_scalar(entry.fields_by_name["key"])
            value_field = entry.fields_by_name["value"]
            target = getattr(message, field.name)
            if value_field.message_type is not None:
                if depth < 4:
                    populate(target[key], depth + 1)
            else:
                target[key] = sample_scalar(value_field)
        elif field.message_type is not None:
            if depth >= 4:
                continue
            if field.is_repeated:
                populate(getattr(message, field.name).add(), depth + 1)
            else:
                populate(getattr(message, field.name), depth + 1)
                if not getattr(message, field.name).ByteSize():
                    getattr(message, field.name).SetInParent()
        elif field.is_repeated:
            getattr(message, field.name).extend([sample_scalar(field)] * 2)
        else:
            setattr(message, field.name, sample_scalar(field))
    return message


def sample_scalar(field: FieldDescriptor) -> object:
    if field.enum_type is not None:
        return field.enum_type.values[-1].number
    cpp = FieldDescriptor
    return {
        cpp.CPPTYPE_INT32: -7,
        cpp.CPPTYPE_INT64: -7_000_000_000,
        cpp.CPPTYPE_UINT32: 7,
        cpp.CPPTYPE_UINT64: 7_000_000_000,
        cpp.CPPTYPE_FLOAT: 1.5,
        cpp.CPPTYPE_DOUBLE: 2.25,
        cpp.CPPTYPE_BOOL: True,
        cpp.CPPTYPE_STRING: b"\x00raw" if field.type == cpp.TYPE_BYTES else f"s-{field.name}",
    }[field.cpp_type]


@pytest.mark.parametrize(
    "descriptor",
    top_level_messages(OURS),
    ids=lambda d: d.name,
)
def test_fully_populated_message_crosses_to_triton_and_back(descriptor: Descriptor) -> None:
    """Bytes and text written by us read identically with Triton's classes."""
    in_service = descriptor.file is grpc_service_pb2.DESCRIPTOR
    ours_module = grpc_service_pb2 if in_service else model_config_pb2
    triton_module = triton_service if in_service else triton_model_config
    ours = populate(getattr(ours_module, descriptor.name)())
    theirs_class = getattr(triton_module, descriptor.name)
    wire = ours.SerializeToString(deterministic=True)
    as_text = text_format.MessageToString(ours)

    theirs = theirs_class.FromString(wire)
    # Text output skips unknown fields, so equal text means Triton understood
    # every field we wrote, by the same name and value.
    assert text_format.MessageToString(theirs) == as_text
    assert theirs.SerializeToString(deterministic=True) == wire
    assert text_format.MessageToString(text_format.Parse(as_text, theirs_class())) == as_text
    assert type(ours).FromString(theirs.SerializeToString()) == ours


class _EchoServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Just enough of a server to let the real client exercise the stubs."""

    def ServerLive(
        self, request: grpc_service_pb2.ServerLiveRequest, context: grpc.ServicerContext
    ) -> grpc_service_pb2.ServerLiveResponse:
        return grpc_service_pb2.ServerLiveResponse(live=True)

    def ModelInfer(
        self, request: grpc_service_pb2.ModelInferRequest, context: grpc.ServicerContext
    ) -> grpc_service_pb2.ModelInferResponse:
        response = grpc_service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            response.outputs.add(
                name=f"{tensor.name}_out", datatype=tensor.datatype, shape=tensor.shape
            )
            response.raw_output_contents.append(raw)
        return response


def test_tritonclient_talks_to_the_generated_servicer() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live()
        data = np.arange(6, dtype=np.float32).reshape(2, 3)
        tensor = triton_grpc.InferInput("x", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer("echo", [tensor], request_id="r1")
        np.testing.assert_array_equal(result.as_numpy("x_out"), data)
        assert result.get_response().id == "r1"
        # Declared but not implemented RPCs answer UNIMPLEMENTED, like Triton
        # without the feature, instead of breaking the connection.
        with pytest.raises(Exception, match="UNIMPLEMENTED"):
            client.get_cuda_shared_memory_status()
        client.close()
    finally:
        server.stop(grace=None)


# --------------------------------------------------------------------------- config text


def test_model_config_text_round_trip() -> None:
    config = model_config_pb2.ModelConfig(
        name="transformer_encoder",
        platform="onnxruntime_onnx",
        max_batch_size=16,
    )
    ids = config.input.add(name="input_ids", data_type=model_config_pb2.TYPE_INT64)
    ids.dims.append(-1)
    out = config.output.add(name="attention", data_type=model_config_pb2.TYPE_FP32)
    out.dims.extend([4, -1, -1])
    batching = config.dynamic_batching
    batching.preferred_batch_size.extend([4, 8])
    batching.max_queue_delay_microseconds = 2000
    batching.default_queue_policy.max_queue_size = 64
    batching.default_queue_policy.timeout_action = model_config_pb2.ModelQueuePolicy.REJECT
    batching.priority_levels = 2
    batching.priority_queue_policy[1].default_timeout_microseconds = 500
    config.instance_group.add(count=2, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    warmup = config.model_warmup.add(name="zeros", batch_size=1)
    warmup.inputs["input_ids"].data_type = model_config_pb2.TYPE_INT64
    warmup.inputs["input_ids"].dims.append(8)
    warmup.inputs["input_ids"].zero_data = True
    config.parameters["attnserve.pad_inputs"].string_value = "input_ids:0,attention_mask:0"

    text = text_format.MessageToString(config)
    parsed = text_format.Parse(text, model_config_pb2.ModelConfig())

    assert parsed == config
    assert parsed.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert parsed.model_warmup[0].inputs["input_ids"].WhichOneof("input_data_type") == "zero_data"
    assert "max_queue_delay_microseconds: 2000" in text
    assert "kind: KIND_CPU" in text


def test_triton_style_config_pbtxt_parses() -> None:
    """A config as people write them for Triton (lists, enum names, maps)."""
    text = """
    name: "se_cnn_classifier"
    platform: "onnxruntime_onnx"
    max_batch_size: 32
    version_policy { latest { num_versions: 1 } }
    input [ { name: "image" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 1, 28, 28 ] } ]
    output [
      { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" },
      { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] }
    ]
    dynamic_batching {
      preferred_batch_size: [ 8, 16 ]
      max_queue_delay_microseconds: 1000
      default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 100000
                             allow_timeout_override: true max_queue_size: 128 }
    }
    instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]
    optimization { execution_accelerators { gpu_execution_accelerator [
      { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }
    model_warmup [ { name: "random" batch_size: 4 count: 2
      inputs { key: "image"
               value { data_type: TYPE_FP32 dims: [ 1, 28, 28 ] random_data: true } } } ]
    parameters { key: "attnserve.labels" value { string_value: "labels.txt" } }
    """
    ours = text_format.Parse(text, model_config_pb2.ModelConfig())
    theirs = text_format.Parse(text, triton_model_config.ModelConfig())

    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )
    assert list(ours.dynamic_batching.preferred_batch_size) == [8, 16]
    policy = ours.dynamic_batching.default_queue_policy
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.DELAY
    assert ours.output[0].label_filename == "labels.txt"
    assert ours.model_warmup[0].inputs["image"].random_data


def test_unknown_config_field_is_rejected() -> None:
    """A misspelt field must fail loudly, not be dropped."""
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sizes: 4", model_config_pb2.ModelConfig())

