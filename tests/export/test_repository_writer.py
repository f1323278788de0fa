"""config.pbtxt: rendered as text, parsed back with the ModelConfig proto the server uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format

from export.repository_writer import (
    ModelConfigSpec,
    TensorConfig,
    WarmupConfig,
    WarmupInput,
    preferred_batch_sizes,
    quote,
    write_model,
)
from export.specs import SPECS

model_config_pb2 = pytest.importorskip("service.proto.inference.model_config_pb2")


def _parse(text: str):  # -> model_config_pb2.ModelConfig
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _read(repo: Path, name: str):  # -> model_config_pb2.ModelConfig
    return _parse((repo / name / "config.pbtxt").read_text())


def _type(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


def test_preferred_batch_sizes() -> None:
    assert preferred_batch_sizes(64) == (8, 16, 32, 64)
    assert preferred_batch_sizes(32) == (4, 8, 16, 32)
    assert preferred_batch_sizes(48) == (8, 16, 32, 48)
    assert preferred_batch_sizes(1) == (1,)


def test_quote_round_trips_through_text_format() -> None:
    nasty = 'say "hi"\\ \n\ttab ünïcode \x01'
    config = _parse(f"name: {quote(nasty)}")
    assert config.name == nasty


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        TensorConfig("x", "TYPE_FP16", (1,))
    with pytest.raises(ValueError):
        TensorConfig("x", "TYPE_FP32", (0,))
    with pytest.raises(ValueError):
        WarmupInput("x", "TYPE_FP32", (-1,))
    with pytest.raises(ValueError):
        ModelConfigSpec("m", 8, (), (), preferred_batch_sizes=(16,))


def test_every_field_round_trips(tmp_path: Path) -> None:
    spec = ModelConfigSpec(
        name="toy",
        max_batch_size=16,
        inputs=(TensorConfig("ids", "TYPE_INT64", (-1,)),),
        outputs=(TensorConfig("y", "TYPE_FP32", (3, -1)),),
        preferred_batch_sizes=(4, 16),
        warmups=(WarmupConfig("w", 2, (WarmupInput("ids", "TYPE_INT64", (7,), "zero_data"),)),),
        parameters={"attnserve.preprocess": json.dumps({"mode": "L", "mean": [0.5]})},
        max_queue_delay_microseconds=250,
        max_queue_size=10,
        instance_count=2,
    )
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx bytes")
    model_dir = write_model(tmp_path / "repo", spec, onnx_file, {"labels.txt": "a\nb\n"}, version=3)
    assert (model_dir / "3" / "model.onnx").read_bytes() == b"onnx bytes"
    assert (model_dir / "labels.txt").read_text() == "a\nb\n"
    assert not list(model_dir.rglob("*.tmp"))
    config = _read(tmp_path / "repo", "toy")
    assert (config.name, config.platform, config.max_batch_size) == ("toy", "onnxruntime_onnx", 16)
    assert (config.input[0].name, _type(config.input[0].data_type), list(config.input[0].dims)) == (
        "ids",
        "TYPE_INT64",
        [-1],
    )
    assert list(config.output[0].dims) == [3, -1]
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 16]
    assert batching.max_queue_delay_microseconds == 250
    assert batching.default_queue_policy.max_queue_size == 10
    assert batching.default_queue_policy.allow_timeout_override
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    warmup = config.model_warmup[0]
    assert (warmup.name, warmup.batch_size, list(warmup.inputs["ids"].dims)) == ("w", 2, [7])
    assert warmup.inputs["ids"].zero_data
    assert json.loads(config.parameters["attnserve.preprocess"].string_value) == {
        "mode": "L",
        "mean": [0.5],
    }


def test_a_second_version_keeps_the_first_and_an_edited_config(tmp_path: Path) -> None:
    """``attnserve export --version 2``: version 1 stays, the operator's config.pbtxt (here a
    version_policy added by hand) and side files are kept, the new folder appears whole."""
    spec = ModelConfigSpec("m", 4, (TensorConfig("x", "TYPE_FP32", (2,)),), (TensorConfig("y", "TYPE_FP32", (2,)),),
                           preferred_batch_sizes=(4,))
    first, second = tmp_path / "1.onnx", tmp_path / "2.onnx"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    model_dir = write_model(tmp_path / "repo", spec, first, {"labels.txt": "a\n"})
    edited = (model_dir / "config.pbtxt").read_text() + "version_policy { all {} }\n"
    (model_dir / "config.pbtxt").write_text(edited)
    write_model(tmp_path / "repo", spec, second, {"labels.txt": "changed\n"}, version=2, keep_config=True)
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"one"
    assert (model_dir / "2" / "model.onnx").read_bytes() == b"two"
    assert (model_dir / "config.pbtxt").read_text() == edited
    assert (model_dir / "labels.txt").read_text() == "a\n"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]  # no staging left
    # Without keep_config (a plain export), the config is rewritten from the spec.
    write_model(tmp_path / "repo", spec, second, version=2)
    assert "version_policy" not in (model_dir / "config.pbtxt").read_text()


def test_side_file_names_stay_in_the_model_folder(tmp_path: Path) -> None:
    spec = ModelConfigSpec("m", 1, (), (), preferred_batch_sizes=(1,))
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    with pytest.raises(ValueError):
        write_model(tmp_path, spec, onnx_file, {"../escape.txt": "x"})


def test_exported_configs_match_the_contract(exported_repo: Path) -> None:
    sagan = _read(exported_repo, "sagan_generator")
    assert sagan.max_batch_size == 64
    assert [(t.name, _type(t.data_type), list(t.dims)) for t in sagan.input] == [
        ("z", "TYPE_FP32", [128]),
        ("class_label", "TYPE_INT64", [1]),
    ]
    assert [(t.name, list(t.dims)) for t in sagan.output] == [
        ("image", [1, 32, 32]),
        ("attention", [256, 64]),
    ]
    assert sagan.parameters["attnserve.labels"].string_value == "labels.txt"

    classifier = _read(exported_repo, "se_cnn_classifier")
    assert classifier.max_batch_size == 64
    assert [(t.name, list(t.dims)) for t in classifier.output] == [
        ("logits", [10]),
        ("probabilities", [10]),
        ("channel_weights", [224]),
    ]
    preprocess = json.loads(classifier.parameters["attnserve.preprocess"].string_value)
    assert preprocess == {"mode": "L", "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081]}

    encoder = _read(exported_repo, "transformer_encoder")
    assert encoder.max_batch_size == 32
    assert [(t.name, _type(t.data_type), list(t.dims)) for t in encoder.input] == [
        ("input_ids", "TYPE_INT64", [-1]),
        ("attention_mask", "TYPE_INT64", [-1]),
    ]
    assert [(t.name, list(t.dims)) for t in encoder.output] == [
        ("embedding", [128]),
        ("logits", [10]),
        ("attention", [4, -1, -1]),
    ]
    params = {k: v.string_value for k, v in encoder.parameters.items()}
    limits = json.loads(params.pop("attnserve.input_limits"))
    assert params == {
        "attnserve.pad_inputs": "input_ids:0,attention_mask:0",
        "attnserve.max_padding_ratio": "0.25",
        "attnserve.labels": "labels.txt",
        "attnserve.tokenizer": "tokenizer.json",
    }
    assert limits == {
        "input_ids": {"min": 0, "max": 259, "max_dims": [128]},
        "attention_mask": {"min": 0, "max": 1, "max_dims": [128]},
    }
    sagan_limits = json.loads(sagan.parameters["attnserve.input_limits"].string_value)
    assert sagan_limits == {"class_label": {"min": 0, "max": 9}}
    tokenizer = json.loads((exported_repo / "transformer_encoder" / "tokenizer.json").read_text())
    assert (tokenizer["pad_id"], tokenizer["bos_id"], tokenizer["eos_id"], tokenizer["unk_id"]) == (
        0,
        1,
        2,
        3,
    )
    assert (tokenizer["byte_offset"], tokenizer["vocab_size"], tokenizer["max_length"]) == (
        4,
        260,
        128,
    )


@pytest.mark.parametrize("name", list(SPECS))
def test_exported_batching_and_warmup(exported_repo: Path, name: str) -> None:
    config = _read(exported_repo, name)
    assert config.platform == "onnxruntime_onnx"
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 1024
    assert max(config.dynamic_batching.preferred_batch_size) == config.max_batch_size
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    ]
    assert [w.batch_size for w in config.model_warmup] == [1, config.max_batch_size]
    for warmup in config.model_warmup:
        assert set(warmup.inputs) == {t.name for t in config.input}
        for tensor in config.input:
            given = warmup.inputs[tensor.name]
            assert given.data_type == tensor.data_type and all(d > 0 for d in given.dims)
            assert len(given.dims) == len(tensor.dims)
            # Random bytes would make out-of-range ids/labels; those warm up with zeros.
            expected = "zero_data" if _type(tensor.data_type) == "TYPE_INT64" else "random_data"
            assert given.WhichOneof("input_data_type") == expected
