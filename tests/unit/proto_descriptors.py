"""Descriptors shared by the protocol tests: ours (service/proto) and Triton's (tritonclient).

Triton's own descriptors ship compiled inside tritonclient; they are the reference every field
number, type and name is checked against. Because our stubs live in their own descriptor pool
(service/proto/pool.py), both sets import side by side in this process.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor
from tritonclient.grpc import model_config_pb2 as triton_model_config
from tritonclient.grpc import service_pb2 as triton_service

from service.proto.inference import grpc_service_pb2, model_config_pb2

OURS = (model_config_pb2.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR)
THEIRS = (triton_model_config.DESCRIPTOR, triton_service.DESCRIPTOR)
TRITON_POOL = triton_service.DESCRIPTOR.pool


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


def top_level_messages(files: tuple[FileDescriptor, ...]) -> list[Descriptor]:
    return [m for f in files for m in f.message_types_by_name.values()]
