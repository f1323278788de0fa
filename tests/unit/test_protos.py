"""The protocol files: generated stubs are fresh, and the wire matches Triton.

Triton's own descriptors ship compiled inside tritonclient; they are the
reference every field number, type and name is checked against. Because our
stubs live in their own descriptor pool (service/proto/pool.py), both sets
import side by side in this process, which is itself part of what is tested.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import warnings
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import descriptor_pb2, text_format, timestamp_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
)
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as triton_model_config
from tritonclient.grpc import service_pb2 as triton_service

from service.proto import pool
from service.proto.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATED_DIR = REPO_ROOT / "service" / "proto"
OURS = (model_config_pb2.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR)
THEIRS = (triton_model_config.DESCRIPTOR, triton_service.DESCRIPTOR)
TRITON_POOL = triton_service.DESCRIPTOR.pool

# What the brief requires to be complete: every Triton field of these must be
# present in ours (fields of anything else we omit are only reported).
REQUIRED_MESSAGES = {
    f"inference.{name}"
    for name in (
        "ServerLiveRequest ServerLiveResponse ServerReadyRequest ServerReadyResponse "
        "ModelReadyRequest ModelReadyResponse ServerMetadataRequest ServerMetadataResponse "
        "ModelMetadataRequest ModelMetadataResponse ModelInferRequest ModelInferResponse "
        "ModelStreamInferResponse ModelConfigRequest ModelConfigResponse "
        "ModelStatisticsRequest ModelStatisticsResponse ModelStatistics InferStatistics "
        "StatisticDuration InferBatchStatistics MemoryUsage InferResponseStatistics "
        "RepositoryIndexRequest RepositoryIndexResponse RepositoryModelLoadRequest "
        "RepositoryModelLoadResponse RepositoryModelUnloadRequest "
        "RepositoryModelUnloadResponse InferParameter InferTensorContents "
        "ModelRepositoryParameter ModelConfig ModelInput ModelOutput ModelInstanceGroup "
        "ModelDynamicBatching ModelQueuePolicy ModelWarmup ModelParameter "
        "ModelVersionPolicy ModelOptimizationPolicy ModelSequenceBatching "
        "ModelEnsembling ModelTransactionPolicy ModelRateLimiter ModelResponseCache "
        "BatchInput BatchOutput ModelRepositoryAgents ModelTensorReshape "
        "ModelOperations ModelMetrics DataType"
    ).split()
}
REQUIRED_METHODS = set(
    "ServerLive ServerReady ModelReady ServerMetadata ModelMetadata ModelInfer "
    "ModelStreamInfer ModelConfig ModelStatistics RepositoryIndex RepositoryModelLoad "
    "RepositoryModelUnload".split()
)


# --------------------------------------------------------------------------- helpers


def is_required_type(full_name: str) -> bool:
    """A required message/enum, or one nested inside a required message."""
    return any(full_name == r or full_name.startswith(r + ".") for r in REQUIRED_MESSAGES)


def walk_messages(container: FileDescriptor | Descriptor) -> Iterator[Descriptor]:
    """Every message type in a file, nested ones included."""
    children = (
        container.message_types_by_name.values()
        if isinstance(container, FileDescriptor)
        else container.nested_types
    )
    for message in children:
        yield message
        yield from walk_messages(message)


def walk_enums(file: FileDescriptor) -> Iterator[EnumDescriptor]:
    yield from file.enum_types_by_name.values()
    for message in walk_messages(file):
        yield from message.enum_types


def field_signature(field: FieldDescriptor) -> dict[str, object]:
    """Everything about a field that the wire or the text format depends on."""
    referenced = field.message_type or field.enum_type
    return {
        "number": field.number,
        "type": field.type,
        "repeated": field.is_repeated,
        "required": field.is_required,
        "presence": field.has_presence,
        "type_name": referenced.full_name if referenced else None,
        "oneof": field.containing_oneof.name if field.containing_oneof else None,
        "map": bool(field.message_type and field.message_type.GetOptions().map_entry),
    }


def find_triton_message(full_name: str) -> Descriptor | None:
    try:
        return TRITON_POOL.FindMessageTypeByName(full_name)
    except KeyError:
        return None


def top_level_messages(files: tuple[FileDescriptor, ...]) -> list[Descriptor]:
    return [m for f in files for m in f.message_types_by_name.values()]


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


def load_generator() -> ModuleType:
    """protos/ is not a package; import generate.py from its path."""
    path = REPO_ROOT / "protos" / "generate.py"
    spec = importlib.util.spec_from_file_location("attnserve_protos_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


# --------------------------------------------------------------------------- freshness


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    generator = load_generator()
    generator.generate(tmp_path / "out")
    expected = tree(tmp_path / "out")
    committed = tree(GENERATED_DIR)

    assert set(committed) == set(expected), (
        "service/proto/ file set differs from a fresh generation; run `python protos/generate.py`"
    )
    stale = sorted(name for name in expected if committed[name] != expected[name])
    # protoc stamps its version into the output, so a different grpcio-tools
    # also reads as stale; say which one made the committed files.
    assert not stale, (
        f"stale generated files {stale}; run `python protos/generate.py` "
        f"(committed stubs made by grpcio-tools {grpc_service_pb2_grpc.GRPC_GENERATED_VERSION}, "
        f"installed {importlib.metadata.version('grpcio-tools')})"
    )


def test_generator_picks_up_every_proto() -> None:
    generator = load_generator()
    protos = {p.as_posix() for p in generator.find_protos()}
    assert {"inference/grpc_service.proto", "inference/model_config.proto"} <= protos
    root = REPO_ROOT / "protos"
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.proto")}
    assert protos == on_disk


def test_generated_modules_use_package_imports_and_private_pool() -> None:
    for path in sorted([*GENERATED_DIR.rglob("*.py"), *GENERATED_DIR.rglob("*.pyi")]):
        text = path.read_text(encoding="utf-8")
        assert "from inference " not in text and "from inference." not in text, path
        assert "_descriptor_pool.Default().AddSerializedFile" not in text, path
    assert grpc_service_pb2.DESCRIPTOR.pool is pool.POOL
    assert model_config_pb2.DESCRIPTOR.pool is pool.POOL
    module = grpc_service_pb2.ModelInferRequest.__module__
    assert module == "service.proto.inference.grpc_service_pb2"


# --------------------------------------------------------------------------- wire compatibility


def test_files_declare_package_inference() -> None:
    for ours in OURS:
        assert ours.package == "inference"
    assert "inference.GRPCInferenceService" in {
        s.full_name for s in grpc_service_pb2.DESCRIPTOR.services_by_name.values()
    }


def test_every_field_matches_triton() -> None:
    mismatches: list[str] = []
    omitted: list[str] = []
    checked = 0
    for file in OURS:
        for message in walk_messages(file):
            theirs = find_triton_message(message.full_name)
            if theirs is None:
                mismatches.append(f"{message.full_name}: not a Triton message")
                continue
            for field in message.fields:
                other = theirs.fields_by_name.get(field.name)
                if other is None:
                    mismatches.append(f"{message.full_name}.{field.name}: not in Triton")
                    continue
                checked += 1
                if field_signature(field) != field_signature(other):
                    mismatches.append(
                        f"{message.full_name}.{field.name}: ours {field_signature(field)} "
                        f"!= Triton {field_signature(other)}"
                    )
            ours_numbers = {f.number for f in message.fields}
            omitted += [
                f"{message.full_name}.{f.name}"
                for f in theirs.fields
                if f.name not in message.fields_by_name and f.number not in ours_numbers
            ]
            oneofs = {o.name: sorted(f.name for f in o.fields) for o in message.oneofs}
            their_oneofs = {
                o.name: sorted(f.name for f in o.fields if f.name in message.fields_by_name)
                for o in theirs.oneofs
            }
            if oneofs != {k: v for k, v in their_oneofs.items() if v}:
                mismatches.append(f"{message.full_name}: oneofs {oneofs} != {their_oneofs}")

    assert not mismatches, "\n".join(mismatches)
    assert checked > 300  # guards against walking nothing
    required_omitted = [name for name in omitted if is_required_type(name.rsplit(".", 1)[0])]
    assert not required_omitted, f"required Triton fields missing: {required_omitted}"
    if omitted:
        warnings.warn(f"Triton fields attnserve omits: {omitted}", stacklevel=1)


def test_every_triton_message_is_defined_or_reported() -> None:
    ours = {m.full_name for f in OURS for m in walk_messages(f)}
    ours |= {e.full_name for f in OURS for e in walk_enums(f)}
    theirs = {m.full_name for f in THEIRS for m in walk_messages(f)}
    theirs |= {e.full_name for f in THEIRS for e in walk_enums(f)}
    missing = sorted(theirs - ours)
    required_missing = [name for name in missing if is_required_type(name)]
    assert not required_missing, f"required Triton types missing: {required_missing}"
    if missing:
        warnings.warn(f"Triton types attnserve omits: {missing}", stacklevel=1)


def test_every_enum_value_matches_triton() -> None:
    mismatches: list[str] = []
    for file in OURS:
        for enum in walk_enums(file):
            theirs = TRITON_POOL.FindEnumTypeByName(enum.full_name)
            ours_values = {v.name: v.number for v in enum.values}
            their_values = {v.name: v.number for v in theirs.values}
            if ours_values != their_values:
                mismatches.append(f"{enum.full_name}: ours {ours_values} != Triton {their_values}")
    assert not mismatches, "\n".join(mismatches)


def test_service_methods_match_triton() -> None:
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name

    def signature(method: MethodDescriptor) -> tuple[str, str, bool, bool]:
        return (
            method.input_type.full_name,
            method.output_type.full_name,
            method.client_streaming,
            method.server_streaming,
        )

    for method in ours.methods:
        other = theirs.methods_by_name.get(method.name)
        assert other is not None, f"{method.name} is not a Triton RPC"
        assert signature(method) == signature(other), method.name
    ours_names = {m.name for m in ours.methods}
    assert REQUIRED_METHODS <= ours_names
    omitted = sorted({m.name for m in theirs.methods} - ours_names)
    if omitted:
        warnings.warn(f"Triton RPCs attnserve omits: {omitted}", stacklevel=1)
    stream = ours.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming


def test_grpc_stub_registers_triton_method_paths() -> None:
    """The paths on the wire are what tritonclient calls."""
    servicer = grpc_service_pb2_grpc.GRPCInferenceServiceServicer()
    assert hasattr(servicer, "ModelInfer") and hasattr(servicer, "ModelStreamInfer")
    source = Path(grpc_service_pb2_grpc.__file__).read_text(encoding="utf-8")
    for name in REQUIRED_METHODS:
        assert f"'/inference.GRPCInferenceService/{name}'" in source


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


# --------------------------------------------------------------------------- pool


def test_pool_copies_well_known_dependencies() -> None:
    """A future attnserve proto importing a well-known type still registers."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="attnserve_pool_test/uses_timestamp.proto",
        package="attnserve_pool_test",
        syntax="proto3",
        dependency=[timestamp_pb2.DESCRIPTOR.name],
    )
    message = proto.message_type.add(name="Stamped")
    message.field.add(
        name="at",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        type_name=".google.protobuf.Timestamp",
    )
    file = pool.add_serialized_file(proto.SerializeToString())

    assert file.pool is pool.POOL
    timestamp = pool.POOL.FindMessageTypeByName("google.protobuf.Timestamp")
    assert timestamp.file.name == timestamp_pb2.DESCRIPTOR.name
    assert pool.adopt(file) is file  # adopting a file already there is a no-op
