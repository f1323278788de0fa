"""config.pbtxt -> ModelConfig proto -> ModelSpec, and the load-time graph checks."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from service.errors import ModelLoadError
from service.model_config import read_config, to_spec
from service.validation import check_against_graph, warmup_inputs

ENCODER = """
name: "enc"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }
]
output [
  { name: "embedding" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "attention" data_type: TYPE_FP32 dims: [ 2, -1, -1 ] }
]
dynamic_batching {
  preferred_batch_size: [ 8, 4 ]
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 16 default_timeout_microseconds: 2000 allow_timeout_override: true }
  priority_levels: 2
  default_priority_level: 2
}
instance_group [ { count: 2 kind: KIND_CPU } ]
model_warmup [
  { name: "b2" batch_size: 2
    inputs { key: "input_ids" value { data_type: TYPE_INT64 dims: [ 16 ] random_data: true } }
    inputs { key: "attention_mask" value { data_type: TYPE_INT64 dims: [ 16 ] zero_data: true } } }
]
parameters { key: "attnserve.pad_inputs" value { string_value: "input_ids:0,attention_mask:0" } }
"""


def write(tmp_path: Path, text: str, folder: str = "enc") -> Path:
    d = tmp_path / folder
    d.mkdir(parents=True)
    (d / "config.pbtxt").write_text(text)
    return d


def test_encoder_config_reads_into_a_spec(tmp_path):
    spec = to_spec(read_config(write(tmp_path, ENCODER)))
    assert spec.max_batch_size == 8 and spec.instance_count == 2
    assert [t.name for t in spec.inputs] == ["input_ids", "attention_mask"]
    assert spec.inputs[0].dtype == np.int64 and spec.inputs[0].variable_axes == (1,)
    p = spec.policy
    assert p.preferred_batch_sizes == (4, 8)
    assert p.max_queue_delay_s == pytest.approx(0.0005)
    assert (p.max_queue_size, p.default_timeout_s, p.priority_levels, p.default_priority) == (16, 0.002, 2, 2)
    assert p.max_concurrent_batches == 2
    assert dict(p.pad_values) == {"input_ids": 0.0, "attention_mask": 0.0}
    assert dict(p.variable_output_axes) == {"attention": (2, 3)}
    (sample,) = spec.warmup
    assert sample.batch_size == 2 and sample.inputs["attention_mask"] == ("INT64", (16,), "zero")


def test_no_dynamic_batching_means_one_request_per_execution(tmp_path):
    text = ENCODER.split("dynamic_batching")[0] + "\n"
    spec = to_spec(read_config(write(tmp_path, text)))
    assert spec.policy.dynamic is False and spec.policy.pad_values == {}


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda t: t.replace('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"'), "not served"),
        (lambda t: t.replace('name: "enc"', 'name: "other"'), "does not match its folder"),
        (lambda t: t.replace("max_batch_size: 8", "max_batch_sise: 8"), "not a valid ModelConfig"),
        (lambda t: t.replace("preferred_batch_size: [ 8, 4 ]", "preferred_batch_size: [ 9 ]"), "preferred_batch_size"),
        (lambda t: t.replace("input_ids:0,", "embedding:0,"), "not a variable-dim input"),
        (lambda t: t.replace("dims: [ 4 ]", "dims: [ 0 ]"), "dims"),
    ],
)
def test_bad_configs_are_load_errors_naming_the_problem(tmp_path, edit, fragment):
    with pytest.raises(ModelLoadError, match=fragment):
        to_spec(read_config(write(tmp_path, edit(ENCODER))))


def test_missing_config_is_a_load_error(tmp_path):
    (tmp_path / "enc").mkdir()
    with pytest.raises(ModelLoadError, match="no config.pbtxt"):
        read_config(tmp_path / "enc")


def meta(name, dtype, shape):
    return SimpleNamespace(name=name, dtype=np.dtype(dtype), shape=shape)


def runner_with(inputs, outputs):
    return SimpleNamespace(input_meta=tuple(inputs), output_meta=tuple(outputs))


GOOD_GRAPH = dict(
    inputs=[meta("input_ids", "int64", ("batch", "seq")), meta("attention_mask", "int64", ("batch", "seq"))],
    outputs=[meta("embedding", "float32", ("batch", 4)), meta("attention", "float32", ("batch", 2, "seq", "seq"))],
)


def test_graph_matching_the_config_passes(tmp_path):
    spec = to_spec(read_config(write(tmp_path, ENCODER)))
    check_against_graph(spec, runner_with(**GOOD_GRAPH))


@pytest.mark.parametrize(
    "graph, fragment",
    [
        (dict(GOOD_GRAPH, outputs=[meta("emb", "float32", ("b", 4))]), "'embedding' is not in the ONNX graph"),
        (dict(GOOD_GRAPH, outputs=[meta("embedding", "float16", ("b", 4)), GOOD_GRAPH["outputs"][1]]), "FP32 in config"),
        (dict(GOOD_GRAPH, outputs=[meta("embedding", "float32", ("b", 5)), GOOD_GRAPH["outputs"][1]]), "dim 1 is 5"),
        (dict(GOOD_GRAPH, inputs=[meta("input_ids", "int64", ("b", 16)), GOOD_GRAPH["inputs"][1]]), "fixed at 16"),
        (dict(GOOD_GRAPH, inputs=GOOD_GRAPH["inputs"] + [meta("extra", "int64", ("b",))]), "missing from config"),
        (dict(GOOD_GRAPH, outputs=[meta("embedding", "float32", ("b",)), GOOD_GRAPH["outputs"][1]]), "rank"),
    ],
)
def test_graph_mismatches_are_load_errors(tmp_path, graph, fragment):
    spec = to_spec(read_config(write(tmp_path, ENCODER)))
    with pytest.raises(ModelLoadError, match=fragment):
        check_against_graph(spec, runner_with(**graph))


def test_warmup_inputs_have_the_sample_shape_and_stay_in_range(tmp_path):
    spec = to_spec(read_config(write(tmp_path, ENCODER)))
    inputs = warmup_inputs(spec.warmup[0])
    assert inputs["input_ids"].shape == (2, 16) and inputs["input_ids"].dtype == np.int64
    assert set(np.unique(inputs["input_ids"])) <= {0, 1}
    assert not inputs["attention_mask"].any()


def test_inconsistent_priority_settings_are_load_errors(tmp_path):
    text = ENCODER.replace("default_priority_level: 2", "default_priority_level: 5")
    with pytest.raises(ModelLoadError, match="model 'enc'"):
        to_spec(read_config(write(tmp_path, text)))


def test_input_limits_parameter_reaches_the_tensor_specs(tmp_path):
    limits = '{\\"input_ids\\":{\\"min\\":0,\\"max\\":259,\\"max_dims\\":[128]}}'
    text = ENCODER + f'parameters {{ key: "attnserve.input_limits" value {{ string_value: "{limits}" }} }}\n'
    spec = to_spec(read_config(write(tmp_path, text)))
    ids = spec.input("input_ids")
    assert (ids.min_value, ids.max_value, ids.max_dims) == (0, 259, (128,))
    assert spec.input("attention_mask").max_dims is None


def test_input_limits_for_unknown_inputs_are_load_errors(tmp_path):
    text = ENCODER + 'parameters { key: "attnserve.input_limits" value { string_value: "{\\"nope\\":{}}" } }\n'
    with pytest.raises(ModelLoadError, match="unknown inputs"):
        to_spec(read_config(write(tmp_path, text)))


@pytest.mark.parametrize("value, expected", [(None, True), ("false", False), (" TRUE ", True)])
def test_dispatch_when_idle_parameter_reaches_the_policy(tmp_path, value, expected):
    text = ENCODER
    if value is not None:
        text += f'parameters {{ key: "attnserve.dispatch_when_idle" value {{ string_value: "{value}" }} }}\n'
    assert to_spec(read_config(write(tmp_path, text))).policy.dispatch_when_idle is expected


def test_dispatch_when_idle_must_be_true_or_false(tmp_path):
    text = ENCODER + 'parameters { key: "attnserve.dispatch_when_idle" value { string_value: "yes" } }\n'
    with pytest.raises(ModelLoadError, match="dispatch_when_idle must be 'true' or 'false'"):
        to_spec(read_config(write(tmp_path, text)))


def test_max_padding_ratio_reaches_the_policy_of_a_padded_model(tmp_path):
    text = ENCODER + 'parameters { key: "attnserve.max_padding_ratio" value { string_value: "0.5" } }\n'
    assert to_spec(read_config(write(tmp_path / "a", text))).policy.max_padding_ratio == 0.5
    assert to_spec(read_config(write(tmp_path / "b", ENCODER))).policy.max_padding_ratio is None


@pytest.mark.parametrize("value", ["-1", "lots", "nan", "inf"])
def test_max_padding_ratio_must_be_a_number_at_least_zero(tmp_path, value):
    text = ENCODER + f'parameters {{ key: "attnserve.max_padding_ratio" value {{ string_value: "{value}" }} }}\n'
    with pytest.raises(ModelLoadError, match="max_padding_ratio must be a number >= 0"):
        to_spec(read_config(write(tmp_path, text)))


@pytest.mark.parametrize(
    "groups, expected",
    [
        ("instance_group [ { count: 2 kind: KIND_CPU } ]", "KIND_CPU"),
        ("instance_group [ { count: 1 kind: KIND_GPU } ]", "KIND_GPU"),
        ("instance_group [ { kind: KIND_GPU }, { kind: KIND_CPU } ]", "KIND_AUTO"),
        ("", "KIND_AUTO"),
    ],
)
def test_instance_group_kind_reaches_the_spec(tmp_path, groups, expected):
    text = ENCODER.replace("instance_group [ { count: 2 kind: KIND_CPU } ]", groups)
    assert to_spec(read_config(write(tmp_path, text))).instance_kind == expected
