"""The vision-attention classifiers' shipped weights, re-measured: the issue's bars, the card's
figures, and the exported ONNX predicting what PyTorch predicts on the held-out digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx_export import open_session
from export.specs import SPECS
from export.train import digits, vision
from export.weights import SHIPPED_DIR, load_checkpoint

from .test_onnx_matches_pytorch import _same_argmax

VISION = [name for name in ("cbam_classifier", "stn_classifier", "sasa_classifier") if name in SPECS]


def _recorded(name: str) -> dict:
    return json.loads((SHIPPED_DIR / f"{name}.metrics.json").read_text())


def _shipped(name: str) -> torch.nn.Module:
    spec = SPECS[name]
    model = spec.build(spec.variants["default"])
    load_checkpoint(model, SHIPPED_DIR / f"{name}.safetensors")
    return model.eval()


def _held_out(name: str, split: digits.DigitSplit) -> torch.Tensor:
    """[0, 1] held-out images as the model is measured on them (the STN: distorted canvases)."""
    if name == "stn_classifier":
        from export.train import stn

        return stn.distorted_test_set(split)
    return split.test_images


@pytest.mark.parametrize("name", VISION)
def test_held_out_accuracy_clears_the_bar_and_matches_the_card(name: str, digit_split: digits.DigitSplit) -> None:
    model = _shipped(name)
    result = vision.evaluate(model, _held_out(name, digit_split), digit_split.test_labels, model.config)
    bar = 0.97 if name == "stn_classifier" else 0.985
    assert result["accuracy"] >= bar, result
    recorded = _recorded(name)
    assert result["accuracy"] == pytest.approx(recorded["held_out"]["accuracy"], abs=0.002)
    assert recorded["parameters"] == vision.parameter_count(model)
    card = (SHIPPED_DIR / f"{name}.md").read_text()
    assert f"{recorded['held_out']['accuracy']:.2%}" in card and "se_cnn_classifier" in card
    # Trained on this 2-core machine within the 20 minutes, measured by the run.
    assert recorded["training"]["seconds"] + recorded["training"].get("twin_seconds", 0) <= 20 * 60
    for key in ("batch_1_ms", "batch_32_ms"):
        assert recorded["latency"][key] > 0 and recorded["se_cnn"]["latency"][key] > 0


@pytest.mark.parametrize("name", VISION)
def test_onnx_matches_pytorch_on_held_out_digits(name: str, exported: Path, digit_split: digits.DigitSplit) -> None:
    model = _shipped(name)
    images = vision.normalize(_held_out(name, digit_split), model.config)
    session = open_session(exported / name / "1" / "model.onnx")
    onnx_logits = np.concatenate(
        [session.run(["logits"], {"image": images[i:i + 8].numpy()})[0] for i in range(0, len(images), 8)]
    )
    with torch.no_grad():
        torch_logits = model(images)[0].numpy()
    _same_argmax(onnx_logits, torch_logits)
    bar = 0.97 if name == "stn_classifier" else 0.985
    assert (onnx_logits.argmax(1) == digit_split.test_labels.numpy()).mean() >= bar


@pytest.mark.skipif("stn_classifier" not in SPECS, reason="stn_classifier not served yet")
def test_stn_beats_its_twin_without_the_transformer() -> None:
    """Recorded by the training run, which trained both on the same batches and measured both
    on the same distorted digits (the twin's weights are not shipped, so not re-measured)."""
    recorded = _recorded("stn_classifier")
    twin = recorded["twins"][0]
    assert recorded["held_out"]["accuracy"] >= 0.97
    assert recorded["held_out"]["accuracy"] > twin["accuracy"], (recorded["held_out"]["accuracy"], twin)
