"""Wire compatibility with Triton: every field, enum value, message and RPC of our
inference.* protos matches Triton's descriptors (which ship inside tritonclient), and what
attnserve omits is either allowed or reported.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from tritonclient.grpc import service_pb2 as triton_service

from service.proto.inference import grpc_service_pb2, grpc_service_pb2_grpc
from tests.unit.proto_descriptors import OURS, THEIRS, TRITON_POOL, walk_enums, walk_messages

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

