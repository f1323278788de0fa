"""The descriptor pool that attnserve's generated protobuf modules register in.

protos/generate.py copies this file to service/proto/pool.py and points every
generated *_pb2 module here instead of protobuf's process-wide default pool.

Why: our `inference` messages carry the same full names as Triton's
(wire compatibility demands it), and tritonclient registers its own copy of
them in the default pool from a different file name. Two files defining
`inference.ModelInferRequest` in one pool is a hard error at import time, so
without a pool of our own the server could never share a process with
tritonclient (integration tests, the bundled client CLI, notebooks).

Consequences for callers:
  * server reflection must be given POOL
    (`reflection.enable_server_reflection(names, server, pool=POOL)`), and the
    files of other services it should describe (health, reflection itself)
    must be copied in with `adopt(<module>_pb2.DESCRIPTOR)`;
  * a message field whose type is a protobuf well-known type (Timestamp,
    Struct, ...) gets a class built from this pool, distinct from the one in
    google.protobuf.*_pb2; fill such fields in place (`msg.ts.GetCurrentTime()`)
    rather than assigning google's class.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

POOL = descriptor_pool.DescriptorPool()


def add_serialized_file(serialized: bytes) -> FileDescriptor:
    """Register one serialized FileDescriptorProto in POOL and return it.

    Generated modules call this in place of
    `descriptor_pool.Default().AddSerializedFile`. Dependencies that live
    outside our protos (well-known types) are copied in from the default pool
    first, because a pool must hold a file's imports before the file itself.
    Our own dependencies are already here: their modules were imported first.
    """
    proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    for dependency in proto.dependency:
        _ensure_file(dependency)
    return POOL.AddSerializedFile(serialized)


def adopt(file: FileDescriptor) -> FileDescriptor:
    """Copy a file registered elsewhere (e.g. grpc health) into POOL."""
    return _ensure_file(file.name, file.serialized_pb)


def _ensure_file(name: str, serialized: bytes | None = None) -> FileDescriptor:
    try:
        return POOL.FindFileByName(name)
    except KeyError:
        pass
    if serialized is None:
        serialized = descriptor_pool.Default().FindFileByName(name).serialized_pb
    return add_serialized_file(serialized)
