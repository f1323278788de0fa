"""Model-repository writer: Triton's folder layout and ``config.pbtxt`` text format.

``render_config`` is a pure function from :class:`ModelConfigSpec` to the text of a Triton
``ModelConfig`` (protobuf text format), so writing needs no generated proto module; the
server parses the text back with the proto it serves, and a test does the same round trip.
``write_model`` lays out ``<repo>/<model>/config.pbtxt``, ``<repo>/<model>/<version>/model.onnx``
and side files, replacing each file atomically so a server polling the folder never reads a
half-written model.

The layout is Triton's, so the same folder loads in Triton: attnserve's extras are
``parameters`` entries (``attnserve.*``), which Triton ignores.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PLATFORM = "onnxruntime_onnx"
DATA_TYPES = ("TYPE_FP32", "TYPE_INT64")
WARMUP_DATA = ("random_data", "zero_data")


@dataclass(frozen=True)
class TensorConfig:
    """One served input or output; ``dims`` exclude the batch dim, -1 marks a variable dim."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"{self.name}: data_type must be one of {DATA_TYPES}")
        if any(d == 0 or d < -1 for d in self.dims):
            raise ValueError(f"{self.name}: dims must be positive or -1, got {self.dims}")


@dataclass(frozen=True)
class WarmupInput:
    """A warm-up tensor: fixed dims (no -1) filled with random or zero data."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    data: str = "random_data"

    def __post_init__(self) -> None:
        if self.data not in WARMUP_DATA:
            raise ValueError(f"{self.name}: warm-up data must be one of {WARMUP_DATA}")
        if any(d < 1 for d in self.dims):
            raise ValueError(f"{self.name}: warm-up dims must be fixed and positive")


@dataclass(frozen=True)
class WarmupConfig:
    """One ``model_warmup`` entry: a request of ``batch_size`` rows run once at load."""

    name: str
    batch_size: int
    inputs: tuple[WarmupInput, ...]


@dataclass(frozen=True)
class ModelConfigSpec:
    """Everything ``config.pbtxt`` says about one model."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    preferred_batch_sizes: tuple[int, ...]
    warmups: tuple[WarmupConfig, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)
    max_queue_delay_microseconds: int = 500
    max_queue_size: int = 1024
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ValueError("preferred batch sizes must lie in [1, max_batch_size]")
        if any(not 1 <= w.batch_size <= self.max_batch_size for w in self.warmups):
            raise ValueError("warm-up batch sizes must lie in [1, max_batch_size]")


def preferred_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two from max/8 up to max (and max itself): large batches, few shapes."""
    sizes = {max_batch_size}
    size = 1
    while size < max_batch_size:
        if size * 8 >= max_batch_size:
            sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes; UTF-8 passes through)."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}

    def escape(ch: str) -> str:
        if ch in escapes:
            return escapes[ch]
        if ch.isprintable():
            return ch
        return "".join(f"\\{byte:03o}" for byte in ch.encode())

    return '"' + "".join(escape(ch) for ch in text) + '"'


def _dims(dims: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensor_entries(tensors: Sequence[TensorConfig]) -> str:
    entries = (
        f"    name: {quote(t.name)}\n    data_type: {t.data_type}\n    dims: {_dims(t.dims)}"
        for t in tensors
    )
    return ",\n".join(f"  {{\n{body}\n  }}" for body in entries)


def _warmup_block(warmup: WarmupConfig) -> str:
    lines = ["  {", f"    name: {quote(warmup.name)}", f"    batch_size: {warmup.batch_size}"]
    for tensor in warmup.inputs:
        lines += [
            "    inputs {",
            f"      key: {quote(tensor.name)}",
            "      value {",
            f"        data_type: {tensor.data_type}",
            f"        dims: {_dims(tensor.dims)}",
            f"        {tensor.data}: true",
            "      }",
            "    }",
        ]
    return "\n".join([*lines, "  }"])


def render_config(spec: ModelConfigSpec) -> str:
    """The ``config.pbtxt`` text for ``spec`` (Triton ``ModelConfig`` text format)."""
    lines = [
        f"name: {quote(spec.name)}",
        f"platform: {quote(PLATFORM)}",
        f"max_batch_size: {spec.max_batch_size}",
        "input [",
        _tensor_entries(spec.inputs),
        "]",
        "output [",
        _tensor_entries(spec.outputs),
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: {_dims(spec.preferred_batch_sizes)}",
        f"  max_queue_delay_microseconds: {spec.max_queue_delay_microseconds}",
        "  default_queue_policy {",
        "    timeout_action: REJECT",
        "    allow_timeout_override: true",
        f"    max_queue_size: {spec.max_queue_size}",
        "  }",
        "}",
        "instance_group [",
        f"  {{\n    count: {spec.instance_count}\n    kind: {spec.instance_kind}\n  }}",
        "]",
    ]
    if spec.warmups:
        lines += ["model_warmup [", ",\n".join(_warmup_block(w) for w in spec.warmups), "]"]
    for key, value in sorted(spec.parameters.items()):
        lines += [
            "parameters {",
            f"  key: {quote(key)}",
            f"  value {{\n    string_value: {quote(value)}\n  }}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _readable_mode() -> int:
    """0o666 less the process umask: what open() would give (mkstemp gives 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, _readable_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _replace_model_file(version_dir: Path, onnx_file: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=version_dir, prefix=".model.onnx.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(onnx_file, tmp)
        os.chmod(tmp, _readable_mode())
        os.replace(tmp, version_dir / "model.onnx")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_version_folder(version_dir: Path, onnx_file: Path) -> None:
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=version_dir.parent, prefix=f".{version_dir.name}.", suffix=".tmp"))
    try:
        shutil.copyfile(onnx_file, staging / "model.onnx")
        os.chmod(staging / "model.onnx", _readable_mode())
        os.chmod(staging, _dir_mode())
        os.rename(staging, version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _dir_mode() -> int:
    """0o777 less the process umask: what mkdir would give (mkdtemp gives 0o700)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def write_model(
    repository: Path,
    spec: ModelConfigSpec,
    onnx_file: Path,
    side_files: Mapping[str, str | bytes] | None = None,
    version: int = 1,
    keep_config: bool = False,
) -> Path:
    """Place one model in ``repository``; returns the model folder.

    The ONNX file and side files land before ``config.pbtxt``, so a config never names
    files that are not there yet. The version folder is filled before it gets its name
    (written as a hidden folder, then renamed), so a server polling the repository sees
    either no new version or a whole one. With ``keep_config`` an existing config.pbtxt and
    side files are left as they are (an operator's version_policy or batching edits stay);
    they are written only when the model folder has no config.pbtxt yet.
    """
    model_dir = Path(repository) / spec.name
    version_dir = model_dir / str(version)
    if version_dir.is_dir():
        _replace_model_file(version_dir, onnx_file)
    else:
        _new_version_folder(version_dir, onnx_file)
    if keep_config and (model_dir / "config.pbtxt").is_file():
        return model_dir
    for name, content in (side_files or {}).items():
        if Path(name).name != name:
            raise ValueError(f"side file {name!r} must be a plain file name")
        _write_atomic(model_dir / name, content.encode() if isinstance(content, str) else content)
    _write_atomic(model_dir / "config.pbtxt", render_config(spec).encode())
    return model_dir
