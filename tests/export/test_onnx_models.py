"""The exported ONNX files: parity, symbolic dims, masking and attention maps under ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.errors import ParityError
from export.onnx_export import open_session
from export.pipeline import export_model, load_weights, parity_batches, run_parity
from export.specs import SPECS
from export.weights import seeded_model, shipped_weights

ENCODER = SPECS["transformer_encoder"]


def _shape(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_repository_layout(exported_repo: Path) -> None:
    for name in SPECS:
        assert (exported_repo / name / "config.pbtxt").is_file()
        assert (exported_repo / name / "1" / "model.onnx").is_file()
        assert [p.name for p in (exported_repo / name / "1").iterdir()] == [
            "model.onnx"
        ]  # self-contained
    assert (exported_repo / "transformer_encoder" / "tokenizer.json").is_file()
    labels = (exported_repo / "se_cnn_classifier" / "labels.txt").read_text().split()
    assert labels == [str(i) for i in range(10)]


@pytest.mark.parametrize("name", list(SPECS))
def test_parity_of_written_model_against_fresh_pytorch_model(
    name: str, onnx_paths: dict[str, Path]
) -> None:
    spec = SPECS[name]
    config = spec.variants["default"]
    model = load_weights(spec, config, shipped_weights(name))  # what the default export ships
    rows = run_parity(spec, config, model, onnx_paths[name], max_batch_size=8)
    assert rows and all(row.ok for row in rows), rows
    assert {row.batch for row in rows} == {1, 5, 8}
    if name == "transformer_encoder":
        assert {row.sequence for row in rows} == {17, 128}


def test_parity_catches_a_different_model(onnx_paths: dict[str, Path]) -> None:
    spec = SPECS["se_cnn_classifier"]
    config = spec.variants["default"]
    model = load_weights(spec, config, shipped_weights(spec.name))
    with torch.no_grad():
        model.head.bias[0] += 1e-3  # a tiny change must still be caught
    rows = run_parity(spec, config, model, onnx_paths["se_cnn_classifier"], max_batch_size=2)
    assert not all(row.ok for row in rows)


@pytest.mark.parametrize("name", list(SPECS))
def test_graph_has_named_tensors_and_symbolic_dims(name: str, onnx_paths: dict[str, Path]) -> None:
    model = onnx.load(str(onnx_paths[name]))
    spec = SPECS[name]
    config = spec.variants["default"]
    assert [i.name for i in model.graph.input] == [t.name for t in spec.inputs(config)]
    assert [o.name for o in model.graph.output] == [t.name for t in spec.outputs(config)]
    for value in model.graph.input:
        assert _shape(value)[0] == "batch"
    if name == "transformer_encoder":
        assert [_shape(v) for v in model.graph.input] == [["batch", "sequence"]] * 2
        assert _shape(model.graph.output[2]) == ["batch", 4, "sequence", "sequence"]
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("name", ["sagan_generator", "se_cnn_classifier", "cbam_classifier"])
def test_fixed_shape_models_run_at_two_batch_sizes(name: str, onnx_paths: dict[str, Path]) -> None:
    spec = SPECS[name]
    config = spec.variants["default"]
    session = open_session(onnx_paths[name])
    for batch in (1, 7):
        sample = spec.sample(config, batch, torch.Generator().manual_seed(batch))
        outputs = session.run(None, {k: v.numpy() for k, v in sample.items()})
        expected = [(batch, *t.dims) for t in spec.outputs(config)]
        assert [o.shape for o in outputs] == expected


def _encode(rows: list[bytes], length: int) -> dict[str, np.ndarray]:
    """Byte-level ids (BOS, bytes + 4, EOS) right-padded to ``length``."""
    ids = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        tokens = [1, *(b + 4 for b in row), 2]
        ids[i, : len(tokens)] = tokens
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}


def test_encoder_runs_at_two_batch_sizes_and_sequence_lengths(onnx_paths: dict[str, Path]) -> None:
    session = open_session(onnx_paths["transformer_encoder"])
    for batch, length in ((1, 5), (3, 40), (6, 128)):
        inputs = _encode([b"hi"] * batch, length)
        embedding, logits, attention = session.run(None, inputs)
        assert embedding.shape == (batch, 128) and logits.shape == (batch, 10)
        assert attention.shape == (batch, 4, length, length)


def test_encoder_padding_length_does_not_change_results(onnx_paths: dict[str, Path]) -> None:
    session = open_session(onnx_paths["transformer_encoder"])
    rows = [b"hello world", "grüß gott".encode()]
    short = session.run(["embedding", "logits"], _encode(rows, 13))
    long = session.run(["embedding", "logits"], _encode(rows, 100))
    for a, b in zip(short, long):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_encoder_all_padding_row_is_finite(onnx_paths: dict[str, Path]) -> None:
    session = open_session(onnx_paths["transformer_encoder"])
    inputs = _encode([b"abc", b""], 16)
    inputs["input_ids"][1] = 0
    inputs["attention_mask"][1] = 0  # nothing real at all, not even BOS/EOS
    embedding, logits, attention = session.run(None, inputs)
    assert (
        np.isfinite(embedding).all() and np.isfinite(logits).all() and np.isfinite(attention).all()
    )
    np.testing.assert_array_equal(embedding[1], 0.0)


def test_attention_rows_sum_to_one_over_keys(onnx_paths: dict[str, Path]) -> None:
    encoder_attention = open_session(onnx_paths["transformer_encoder"]).run(
        ["attention"], _encode([b"some text", b"x"], 24)
    )[0]
    np.testing.assert_allclose(encoder_attention.sum(-1), 1.0, rtol=1e-5)
    assert np.abs(encoder_attention[1, :, :, 3:]).max() == 0.0  # pad keys: exactly zero weight
    spec = SPECS["sagan_generator"]
    sample = spec.sample(spec.variants["default"], 3, torch.Generator().manual_seed(3))
    session = open_session(onnx_paths["sagan_generator"])
    image, attention = session.run(None, {k: v.numpy() for k, v in sample.items()})
    assert attention.shape == (3, 256, 64)
    np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
    assert image.min() >= -1.0 and image.max() <= 1.0


def test_sagan_parity_with_attention_switched_on(tmp_path: Path) -> None:
    """γ = 0 hides the g and output convs from the image; open the gate and check again."""
    spec = SPECS["sagan_generator"]
    config = spec.variants["default"]
    model = load_weights(spec, config)
    with torch.no_grad():
        model.attention.gamma.fill_(0.8)
    result = export_model(spec, config, model, tmp_path, max_batch_size=4)
    assert all(row.ok for row in result.rows)
    session = open_session(result.model_dir / "1" / "model.onnx")
    sample = spec.sample(config, 2, torch.Generator().manual_seed(9))
    image = session.run(["image"], {k: v.numpy() for k, v in sample.items()})[0]
    with torch.no_grad():
        model.attention.gamma.zero_()
        gated_off = model(*sample.values())[0].numpy()
    assert np.abs(image - gated_off).max() > 1e-4  # the attention path reaches the image


def test_cbam_variant_exports_with_parity(tmp_path: Path) -> None:
    spec = SPECS["se_cnn_classifier"]
    config = spec.variants["default"].__class__(attention="cbam")
    result = export_model(spec, config, load_weights(spec, config), tmp_path, max_batch_size=3)
    assert [row.batch for row in result.rows][::3] == parity_batches(3) == [1, 2, 3]
    assert all(row.ok for row in result.rows)


def test_export_fails_and_writes_nothing_when_parity_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folding bug (the exported graph drifts from the eval model) must stop the export."""
    from export import onnx_export

    real_prepare = onnx_export.prepare_for_inference

    def bad_prepare(model: torch.nn.Module) -> torch.nn.Module:
        prepared = real_prepare(model)
        with torch.no_grad():
            prepared.stages[0].convs[0].conv.weight.mul_(1.01)  # a 1% error in a folded scale
        return prepared

    monkeypatch.setattr(onnx_export, "prepare_for_inference", bad_prepare)
    spec = SPECS["se_cnn_classifier"]
    config = spec.variants["default"]
    with pytest.raises(ParityError, match="FAIL"):
        export_model(spec, config, load_weights(spec, config), tmp_path, max_batch_size=2)
    assert not (tmp_path / "se_cnn_classifier").exists()
