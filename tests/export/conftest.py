"""One export of the default models per test session (exports take seconds each)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")  # build-time tests: skipped in a serving-only environment

from export.cli import main
from export.specs import SPECS


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding every default model, written by the real CLI."""
    repo = tmp_path_factory.mktemp("model_repository")
    assert main(["--model-repository", str(repo)]) == 0
    return repo


@pytest.fixture(scope="session")
def onnx_paths(exported_repo: Path) -> dict[str, Path]:
    return {name: exported_repo / name / "1" / "model.onnx" for name in SPECS}
