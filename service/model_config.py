"""``config.pbtxt`` -> Triton ``ModelConfig`` proto -> :class:`ModelSpec`.

The server parses the config with the same proto it serves from the ModelConfig RPC, so the
folder also loads in Triton. Everything the rest of the server needs is then read once into
plain frozen dataclasses; no layer below this one touches protobuf.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np
from google.protobuf import json_format, text_format

from service.batching.policy import BatchingPolicy
from service.dtypes import V2_TO_NUMPY, config_type_to_v2
from service.errors import InvalidInput, ModelLoadError
from service.proto.inference import model_config_pb2 as mc

CONFIG_FILE = "config.pbtxt"
ONNX_PLATFORMS = ("onnxruntime_onnx",)
ONNX_BACKENDS = ("onnxruntime",)
PAD_INPUTS_PARAM = "attnserve.pad_inputs"
LIMITS_PARAM = "attnserve.input_limits"
DISPATCH_WHEN_IDLE_PARAM = "attnserve.dispatch_when_idle"
MAX_PADDING_PARAM = "attnserve.max_padding_ratio"
EXECUTION_TIMEOUT_PARAM = "attnserve.execution_timeout_s"
OUTPUT_LENGTHS_PARAM = "attnserve.output_lengths"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output, dims *without* the batch dim; -1 marks a variable dim."""

    name: str
    datatype: str  # v2 name, e.g. "FP32"
    dims: tuple[int, ...]
    # From the attnserve.input_limits parameter: what the graph can take without failing inside
    # ONNX Runtime (ids within the vocabulary, sequences within the position table).
    min_value: float | None = None
    max_value: float | None = None
    max_dims: tuple[int, ...] | None = None

    @property
    def dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    @property
    def variable_axes(self) -> tuple[int, ...]:
        """Variable dims as axes of the *batched* tensor (batch is axis 0)."""
        return tuple(i + 1 for i, d in enumerate(self.dims) if d == -1)


@dataclass(frozen=True)
class WarmupSample:
    name: str
    batch_size: int
    # input name -> (v2 datatype, dims without batch, "zero" | "random")
    inputs: Mapping[str, tuple[str, tuple[int, ...], str]]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    policy: BatchingPolicy
    instance_count: int
    warmup: tuple[WarmupSample, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)
    version_policy: str = "latest"  # "latest" | "all" | "specific"
    # attnserve.execution_timeout_s: None when the config does not say (the server's default
    # applies), 0 for no timeout.
    execution_timeout_s: float | None = None
    version_policy_values: tuple[int, ...] = (1,)
    # instance_group kind: "KIND_CPU", "KIND_GPU" or "KIND_AUTO" (no group, or groups that
    # disagree). service/runtime/providers.py turns it and --provider into the model's device.
    instance_kind: str = "KIND_AUTO"

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)


def read_config(model_dir: Path) -> mc.ModelConfig:
    """Parse ``<model_dir>/config.pbtxt``; a missing or malformed file is a ModelLoadError."""
    path = model_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: no {CONFIG_FILE}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc})") from exc
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{path}: not a valid ModelConfig ({exc})") from exc
    if not config.name:
        config.name = model_dir.name
    elif config.name != model_dir.name:
        raise ModelLoadError(
            f"{path}: name {config.name!r} does not match its folder {model_dir.name!r}"
        )
    return config


def config_from_json(text: str, model_name: str) -> mc.ModelConfig:
    """A RepositoryModelLoad ``config`` override: Triton's JSON form of ModelConfig.

    Like Triton, the JSON is the whole config (it replaces config.pbtxt, it is not merged
    into it). A missing name is the model's; another name is refused.
    """
    config = mc.ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as exc:
        raise InvalidInput(f"load parameter 'config' is not a JSON ModelConfig: {exc}") from exc
    if not config.name:
        config.name = model_name
    elif config.name != model_name:
        raise InvalidInput(f"load parameter 'config' names model {config.name!r}, not {model_name!r}")
    return config


def to_spec(config: mc.ModelConfig) -> ModelSpec:
    """Check a parsed config is one this server can serve, and read it into a ModelSpec."""
    where = f"model {config.name!r}"
    if config.platform not in ONNX_PLATFORMS and config.backend not in ONNX_BACKENDS:
        raise ModelLoadError(
            f"{where}: platform {config.platform!r} / backend {config.backend!r} is not served; "
            f"use platform: \"onnxruntime_onnx\""
        )
    if config.max_batch_size < 0:
        raise ModelLoadError(f"{where}: max_batch_size must be >= 0")
    if not config.input or not config.output:
        raise ModelLoadError(f"{where}: config must list its inputs and outputs")
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    inputs = _with_limits(tuple(_tensor(t, where) for t in config.input), parameters, where)
    outputs = tuple(_tensor(t, where) for t in config.output)
    instances = sum(max(g.count, 1) for g in config.instance_group) or 1
    return ModelSpec(
        name=config.name,
        max_batch_size=config.max_batch_size,
        inputs=inputs,
        outputs=outputs,
        policy=_policy(config, inputs, outputs, parameters, instances, where),
        instance_count=instances,
        warmup=tuple(_warmup(w, where) for w in config.model_warmup),
        parameters=parameters,
        execution_timeout_s=_ratio(parameters, EXECUTION_TIMEOUT_PARAM, where=where),
        instance_kind=_instance_kind(config),
        **_version_policy(config),
    )


def _instance_kind(config: mc.ModelConfig) -> str:
    """The one kind every instance group names, else KIND_AUTO."""
    kinds = {mc.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group}
    return kinds.pop() if len(kinds) == 1 else "KIND_AUTO"


def _tensor(t: mc.ModelInput | mc.ModelOutput, where: str) -> TensorSpec:
    datatype = config_type_to_v2(mc.DataType.Name(t.data_type))
    if datatype not in V2_TO_NUMPY:
        raise ModelLoadError(f"{where}: tensor {t.name!r} has unsupported type {datatype}")
    if any(d == 0 or d < -1 for d in t.dims):
        raise ModelLoadError(f"{where}: tensor {t.name!r} dims {list(t.dims)} (use -1 for variable)")
    return TensorSpec(name=t.name, datatype=datatype, dims=tuple(int(d) for d in t.dims))


def _with_limits(inputs: tuple[TensorSpec, ...], parameters: Mapping[str, str], where: str) -> tuple[TensorSpec, ...]:
    """Apply ``attnserve.input_limits``: {"input": {"min": .., "max": .., "max_dims": [..]}}."""
    raw = parameters.get(LIMITS_PARAM)
    if not raw:
        return inputs
    try:
        limits = json.loads(raw)
        assert isinstance(limits, dict)
    except (ValueError, AssertionError) as exc:
        raise ModelLoadError(f"{where}: {LIMITS_PARAM} is not a JSON object") from exc
    names = {t.name for t in inputs}
    unknown = sorted(set(limits) - names)
    if unknown:
        raise ModelLoadError(f"{where}: {LIMITS_PARAM} names unknown inputs {unknown}")
    out = []
    for t in inputs:
        lim = limits.get(t.name, {})
        max_dims = tuple(int(d) for d in lim["max_dims"]) if "max_dims" in lim else None
        if max_dims is not None and len(max_dims) != len(t.dims):
            raise ModelLoadError(f"{where}: {LIMITS_PARAM} max_dims of {t.name!r} must have {len(t.dims)} entries")
        out.append(replace(t, min_value=lim.get("min"), max_value=lim.get("max"), max_dims=max_dims))
    return tuple(out)


def _policy(
    config: mc.ModelConfig,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    parameters: Mapping[str, str],
    instances: int,
    where: str,
) -> BatchingPolicy:
    pad_values = _pad_values(parameters.get(PAD_INPUTS_PARAM, ""), inputs, where)
    common = dict(
        max_batch_size=config.max_batch_size,
        pad_values=pad_values,
        pad_axes={name: spec.variable_axes for spec in inputs for name in pad_values if spec.name == name},
        variable_output_axes={o.name: o.variable_axes for o in outputs if o.variable_axes}
        if pad_values else {},
        max_concurrent_batches=instances,
        dispatch_when_idle=_flag(parameters, DISPATCH_WHEN_IDLE_PARAM, default=True, where=where),
        max_padding_ratio=_ratio(parameters, MAX_PADDING_PARAM, where=where) if pad_values else None,
        output_lengths=_output_lengths(parameters.get(OUTPUT_LENGTHS_PARAM, ""), where),
    )
    try:
        return _build_policy(config, common)
    except ValueError as exc:  # BatchingPolicy checks its own invariants
        raise ModelLoadError(f"{where}: {exc}") from exc


def _build_policy(config: mc.ModelConfig, common: dict) -> BatchingPolicy:
    if not config.HasField("dynamic_batching"):
        return BatchingPolicy(dynamic=False, **common)
    db = config.dynamic_batching
    for size in db.preferred_batch_size:
        if not 0 < size <= max(config.max_batch_size, 1):
            raise ValueError(f"preferred_batch_size {size} outside 1..max_batch_size")
    queue = db.default_queue_policy
    return BatchingPolicy(
        dynamic=config.max_batch_size > 0,
        preferred_batch_sizes=tuple(sorted(db.preferred_batch_size)),
        max_queue_delay_s=db.max_queue_delay_microseconds / 1e6,
        max_queue_size=queue.max_queue_size,
        default_timeout_s=(queue.default_timeout_microseconds / 1e6) or None,
        allow_timeout_override=queue.allow_timeout_override or not queue.default_timeout_microseconds,
        priority_levels=db.priority_levels,
        default_priority=db.default_priority_level,
        **common,
    )


def _flag(parameters: Mapping[str, str], key: str, *, default: bool, where: str) -> bool:
    raw = parameters.get(key)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise ModelLoadError(f"{where}: parameter {key} must be 'true' or 'false', got {raw!r}")
    return value == "true"


def _ratio(parameters: Mapping[str, str], key: str, *, where: str) -> float | None:
    raw = parameters.get(key)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:  # also refuses nan
        raise ModelLoadError(f"{where}: parameter {key} must be a number >= 0, got {raw!r}")
    return value


def _output_lengths(text: str, where: str) -> dict[str, dict[int, str]]:
    """``"cross_attention:2=query_ids,3=source_ids"`` (outputs separated by ``;``, axes of the
    batched tensor) -> {"cross_attention": {2: "query_ids", 3: "source_ids"}}. BatchingPolicy
    checks the names and axes against the padded inputs and variable outputs."""
    result: dict[str, dict[int, str]] = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        output, _, pairs = item.partition(":")
        by_axis: dict[int, str] = {}
        for pair in filter(None, (p.strip() for p in pairs.split(","))):
            axis, _, name = pair.partition("=")
            if not axis.strip().isdigit() or not name.strip():
                raise ModelLoadError(
                    f"{where}: {OUTPUT_LENGTHS_PARAM} entry {item!r} must read OUTPUT:AXIS=INPUT,..."
                )
            by_axis[int(axis)] = name.strip()
        if not output.strip() or not by_axis:
            raise ModelLoadError(f"{where}: {OUTPUT_LENGTHS_PARAM} entry {item!r} must read OUTPUT:AXIS=INPUT,...")
        result[output.strip()] = by_axis
    return result


def _pad_values(text: str, inputs: tuple[TensorSpec, ...], where: str) -> dict[str, float]:
    """``"input_ids:0,attention_mask:0"`` -> {"input_ids": 0.0, "attention_mask": 0.0}."""
    values: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = item.partition(":")
        spec = next((t for t in inputs if t.name == name), None)
        if spec is None or not spec.variable_axes:
            raise ModelLoadError(f"{where}: {PAD_INPUTS_PARAM} names {name!r}, not a variable-dim input")
        try:
            values[name] = float(value or 0)
        except ValueError as exc:
            raise ModelLoadError(f"{where}: {PAD_INPUTS_PARAM} value for {name!r} is not a number") from exc
    return values


def _warmup(w: mc.ModelWarmup, where: str) -> WarmupSample:
    inputs = {}
    for name, inp in w.inputs.items():
        kind = inp.WhichOneof("input_data_type")
        if kind not in ("zero_data", "random_data"):
            raise ModelLoadError(f"{where}: warmup {w.name!r} input {name!r}: {kind} is not supported")
        datatype = config_type_to_v2(mc.DataType.Name(inp.data_type))
        inputs[name] = (datatype, tuple(int(d) for d in inp.dims), kind.removesuffix("_data"))
    return WarmupSample(name=w.name, batch_size=max(w.batch_size, 1), inputs=inputs)


def _version_policy(config: mc.ModelConfig) -> dict:
    """Triton's ModelVersionPolicy: ``latest { num_versions: N }`` (the default, N = 1),
    ``all {}``, or ``specific { versions: [...] }``."""
    vp = config.version_policy
    which = vp.WhichOneof("policy_choice")
    if which == "all":
        return {"version_policy": "all", "version_policy_values": ()}
    if which == "specific":
        versions = tuple(sorted(set(vp.specific.versions)))
        if not versions or any(v < 0 for v in versions):
            raise ModelLoadError(
                f"model {config.name!r}: version_policy specific needs version numbers >= 0, got {list(vp.specific.versions)}"
            )
        return {"version_policy": "specific", "version_policy_values": versions}
    count = vp.latest.num_versions if which == "latest" else 1
    return {"version_policy": "latest", "version_policy_values": (max(count, 1),)}


def load_json_parameter(model_dir: Path, spec: ModelSpec, key: str) -> dict | None:
    """Read a JSON-valued parameter (inline JSON, or a side file named by the parameter)."""
    raw = spec.parameters.get(key)
    if not raw:
        return None
    text = raw if raw.lstrip().startswith("{") else (model_dir / raw).read_text(encoding="utf-8")
    return json.loads(text)
