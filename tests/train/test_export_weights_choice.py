"""Which weights the export command uses: shipped by default, seeded random on request."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.cli import main
from export.onnx_export import open_session
from export.specs import SPECS
from export.weights import SHIPPED_DIR, seeded_model

SE = "se_cnn_classifier"


def _logits(repo: Path, image: torch.Tensor) -> np.ndarray:
    session = open_session(repo / SE / "1" / "model.onnx")
    return session.run(["logits"], {"image": image.numpy()})[0]


def test_default_export_uses_shipped_weights_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model-repository", str(tmp_path / "shipped"), "--model", SE, "--max-batch-size", "2"]
    assert main(argv) == 0
    assert f"shipped weights {SHIPPED_DIR / (SE + '.safetensors')}" in capsys.readouterr().out

    assert main([*argv[:1], str(tmp_path / "random"), *argv[2:], "--random-weights"]) == 0
    assert "seeded random weights" in capsys.readouterr().out

    image = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        seeded = seeded_model(SPECS[SE], SPECS[SE].variants["default"])(image)[0].numpy()
    np.testing.assert_allclose(_logits(tmp_path / "random", image), seeded, rtol=1e-4, atol=1e-5)
    assert np.abs(_logits(tmp_path / "shipped", image) - seeded).max() > 1e-2


def test_shape_changing_config_needs_random_weights_or_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    override = tmp_path / "wide.json"
    override.write_text(json.dumps({"stage_channels": [16, 32, 64]}))
    repo = tmp_path / "repo"
    argv = ["--model-repository", str(repo), "--model", SE, "--config", f"{SE}={override}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "shape mismatches" in err and "--random-weights" in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()
    assert main([*argv, "--random-weights", "--max-batch-size", "2"]) == 0
