"""The export command line: bad arguments exit 2 with a clear message; overrides and
checkpoints reach the exported model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from export.cli import main
from export.onnx_export import open_session
from export.specs import SPECS
from export.weights import seeded_model

SE = "se_cnn_classifier"


def _fails_with(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _state_dict_file(tmp_path: Path, state: dict[str, torch.Tensor], suffix: str) -> Path:
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def test_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_with(
        capsys,
        ["--model-repository", str(tmp_path), "--model", "resnet"],
        "unknown model(s) resnet",
        "se_cnn_classifier",
    )
    assert not any(tmp_path.iterdir())


def test_missing_repository_argument(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_with(capsys, ["--model", SE], "--model-repository")


def test_unknown_config_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    override = tmp_path / "se.json"
    override.write_text(json.dumps({"reduction": 8, "dropout": 0.1}))
    _fails_with(
        capsys,
        [
            "--model-repository",
            str(tmp_path / "repo"),
            "--model",
            SE,
            "--config",
            f"{SE}={override}",
        ],
        "unknown config field(s) dropout",
        "reduction",
    )


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"reduction": "8"}, "expected an integer"),
        ({"attention": "eca"}, "attention must be"),
        ({"stage_channels": 32}, "expected a list"),
    ],
)
def test_invalid_config_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: dict, needle: str
) -> None:
    path = tmp_path / "se.json"
    path.write_text(json.dumps(override))
    _fails_with(
        capsys,
        ["--model-repository", str(tmp_path), "--model", SE, "--config", f"{SE}={path}"],
        needle,
    )


def test_config_for_a_model_not_exported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.json"
    path.write_text("{}")
    _fails_with(
        capsys,
        [
            "--model-repository",
            str(tmp_path),
            "--model",
            SE,
            "--config",
            f"transformer_encoder={path}",
        ],
        "not being exported",
    )


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_with_wrong_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    state = seeded_model(SPECS[SE], SPECS[SE].variants["default"]).state_dict()
    state["head.extra"] = state.pop("head.weight")
    path = _state_dict_file(tmp_path, state, suffix)
    _fails_with(
        capsys,
        [
            "--model-repository",
            str(tmp_path / "repo"),
            "--model",
            SE,
            "--checkpoint",
            f"{SE}={path}",
        ],
        "missing keys: head.weight",
        "unexpected keys: head.extra",
    )
    assert not (tmp_path / "repo").exists()


def test_checkpoint_with_wrong_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = seeded_model(SPECS[SE], SPECS[SE].variants["default"]).state_dict()
    state["head.weight"] = torch.zeros(2, 128)
    path = _state_dict_file(tmp_path, state, ".pt")
    _fails_with(
        capsys,
        ["--model-repository", str(tmp_path), "--model", SE, "--checkpoint", f"{SE}={path}"],
        "shape mismatches",
        "head.weight (2, 128) != (10, 128)",
    )


def test_checkpoint_that_is_not_a_state_dict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    _fails_with(
        capsys,
        ["--model-repository", str(tmp_path), "--model", SE, "--checkpoint", f"{SE}={path}"],
        "cannot read checkpoint",
    )
    _fails_with(
        capsys,
        [
            "--model-repository",
            str(tmp_path),
            "--model",
            SE,
            "--checkpoint",
            f"{SE}={tmp_path / 'absent.pt'}",
        ],
        "does not exist",
    )


def test_bad_max_batch_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_with(
        capsys, ["--model-repository", str(tmp_path), "--max-batch-size", "0"], "--max-batch-size"
    )


def test_checkpoint_and_override_reach_the_exported_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = SPECS[SE]
    override = {"export_channel_weights": False, "labels": list("abcdefghij")}
    config = spec.variants["default"].__class__(
        export_channel_weights=False, labels=tuple("abcdefghij")
    )
    trained = seeded_model(spec, config)
    with torch.no_grad():
        trained.head.bias.copy_(torch.arange(10.0))  # unmistakably not the seeded weights
    checkpoint = _state_dict_file(tmp_path, trained.state_dict(), ".safetensors")
    config_file = tmp_path / "se.json"
    config_file.write_text(json.dumps(override))
    repo = tmp_path / "repo"
    argv = [
        "--model-repository",
        str(repo),
        "--model",
        SE,
        "--max-batch-size",
        "4",
        "--checkpoint",
        f"{SE}={checkpoint}",
        "--config",
        f"{SE}={config_file}",
        "--instance-kind",
        "gpu",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "max_abs_err" in out and "FAIL" not in out
    session = open_session(repo / SE / "1" / "model.onnx")
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    image = torch.randn(2, 1, 28, 28)
    logits = session.run(["logits"], {"image": image.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, trained(image)[0].numpy(), rtol=1e-4, atol=1e-5)
    assert (repo / SE / "labels.txt").read_text().split() == list("abcdefghij")
    assert "channel_weights" not in (repo / SE / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in (repo / SE / "config.pbtxt").read_text()
    # The GPU image's repository (deploy/docker/Dockerfile, export-gpu) says KIND_GPU.
    assert "kind: KIND_GPU" in (repo / SE / "config.pbtxt").read_text()


def test_module_entry_point_and_no_torch_for_usage_errors(tmp_path: Path) -> None:
    """``python -m export`` works, and a usage error answers before torch is even imported."""
    root = Path(__file__).resolve().parents[2]
    helped = subprocess.run(
        [sys.executable, "-m", "export", "--help"], capture_output=True, text=True, cwd=root
    )
    assert helped.returncode == 0 and "--model-repository" in helped.stdout
    probe = (
        "import sys; from export.cli import main; "
        f"code = main(['--model-repository', {str(tmp_path)!r}, '--model', 'nope']); "
        "print(code, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root)
    assert result.stdout.split() == ["2", "False"], result.stderr
