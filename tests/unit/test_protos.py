"""The generated stubs: fresh against a new generation (protos/generate.py), importing through
package paths and attnserve's private descriptor pool (service/proto/pool.py).

tests/unit/test_protos_wire.py checks them against Triton's descriptors, and
tests/unit/test_protos_round_trip.py sends their messages across to Triton and back.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pb2, timestamp_pb2

from service.proto import pool
from service.proto.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATED_DIR = REPO_ROOT / "service" / "proto"


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
