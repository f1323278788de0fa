"""The attention family's shipped weights: each member clears 97% on new phrases (as its card
says, within a tie), and its exported ONNX predicts what PyTorch predicts on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.cli import main
from export.defaults import LANGID_FAMILY
from export.onnx_export import open_session
from export.train import langid_attention, langid_data
from export.weights import SHIPPED_DIR, load_checkpoint

CLASSIFIERS = [m for m in LANGID_FAMILY if not langid_attention.CONFIGS[m].cross]


@pytest.fixture(scope="module")
def members() -> dict[str, torch.nn.Module]:
    models = {}
    for name in CLASSIFIERS:
        path = SHIPPED_DIR / f"{name}.safetensors"
        assert path.is_file(), f"{path} is missing: run python -m export.train {name}"
        model = langid_attention.build_model(name, 0)
        load_checkpoint(model, path)
        models[name] = model.eval()
    return models


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("family_repository")
    flags = [part for name in CLASSIFIERS for part in ("--model", name)]
    assert main(["--model-repository", str(repo), "--max-batch-size", "8", *flags]) == 0
    return repo


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_member_new_phrases_accuracy(
    name: str, members: dict[str, torch.nn.Module], langid_splits: langid_data.LangIdData
) -> None:
    new = langid_splits.new_phrases
    accuracy = float((langid_attention.predict(members[name], new.texts) == new.labels).mean())
    assert accuracy >= 0.97
    recorded = json.loads((SHIPPED_DIR / f"{name}.metrics.json").read_text())["held_out"]
    assert accuracy == pytest.approx(recorded["new_phrases"]["accuracy"], abs=0.002)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_member_onnx_predicts_what_pytorch_predicts(
    name: str, exported: Path, members: dict[str, torch.nn.Module], langid_splits: langid_data.LangIdData
) -> None:
    texts = langid_splits.new_phrases.texts[::5]  # 1,000 phrases of every language
    session = open_session(exported / name / "1" / "model.onnx")
    config = members[name].config
    rows = langid_data.encode(texts, config)
    ids, mask = langid_data.pad(rows)  # one ragged batch, padded to the longest phrase
    onnx_logits = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        torch_logits = members[name](ids, mask)[1].numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, rtol=1e-4, atol=1e-4)


def test_pair_model_on_held_out_pairs(langid_splits: langid_data.LangIdData) -> None:
    """"Same language?" on pairs drawn from the new-phrase split, as the card says."""
    path = SHIPPED_DIR / "langid_pair.safetensors"
    assert path.is_file(), f"{path} is missing: run python -m export.train langid_pair"
    model = langid_attention.build_model("langid_pair", 0)
    load_checkpoint(model, path)
    pairs = langid_attention.pair_split(langid_splits.new_phrases, langid_attention.PAIR_TEST_SEED)
    predicted = langid_attention.predict_pairs(model.eval(), pairs["queries"], pairs["sources"])
    report = langid_attention.pair_report(predicted, pairs["same"])
    assert report["accuracy"] >= 0.95 and min(report["same_language_accuracy"], report["different_language_accuracy"]) >= 0.9
    recorded = json.loads((SHIPPED_DIR / "langid_pair.metrics.json").read_text())["held_out"]["new_phrases"]
    assert report["accuracy"] == pytest.approx(recorded["accuracy"], abs=0.002)
