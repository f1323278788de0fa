"""The exported ONNX of the shipped weights predicts what PyTorch predicts on held-out data.

The repository is written by the real export command with no ``--checkpoint`` (so this also
checks that the default export picks up the shipped weights), then ONNX Runtime runs the
held-out digits, the new-phrase test split and the generator's seeded latents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.models.sagan_generator import SaganGenerator
from export.models.se_cnn_classifier import SeCnnClassifier
from export.models.transformer_encoder import TransformerEncoder
from export.onnx_export import open_session
from export.train import digits, gan_eval, langid_data

from .test_shipped_quality import GENERATOR_SAMPLES


def _session(repo: Path, name: str):  # type: ignore[no-untyped-def]
    return open_session(repo / name / "1" / "model.onnx")


def _same_argmax(onnx_logits: np.ndarray, torch_logits: np.ndarray) -> None:
    """Equal predictions, except where PyTorch's top two are within float noise."""
    top2 = np.sort(torch_logits, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4
    np.testing.assert_array_equal(onnx_logits.argmax(1)[clear], torch_logits.argmax(1)[clear])
    assert clear.mean() > 0.99  # ties must stay rare, or the check above says little


def test_se_cnn_onnx_matches_pytorch(
    exported: Path, classifier: SeCnnClassifier, digit_split: digits.DigitSplit
) -> None:
    images = digits.normalize(digit_split.test_images)
    session = _session(exported, "se_cnn_classifier")
    onnx_logits = session.run(["logits"], {"image": images.numpy()})[0]
    with torch.no_grad():
        torch_logits = classifier(images)[0].numpy()
    _same_argmax(onnx_logits, torch_logits)
    assert (onnx_logits.argmax(1) == digit_split.test_labels.numpy()).mean() >= 0.98
    labels = (exported / "se_cnn_classifier" / "labels.txt").read_text().split()
    assert labels == [str(d) for d in range(10)]


def test_encoder_onnx_matches_pytorch(
    exported: Path,
    encoder: TransformerEncoder,
    encoder_predictions: dict[str, np.ndarray],
    langid_splits: langid_data.LangIdData,
) -> None:
    session = _session(exported, "transformer_encoder")
    new = langid_splits.new_phrases
    rows = langid_data.encode(new.texts)
    order = np.argsort([len(r) for r in rows], kind="stable")  # little padding, as served
    onnx_logits = np.empty((len(rows), len(langid_data.LANGUAGES)), dtype=np.float32)
    torch_logits = np.empty_like(onnx_logits)
    for start in range(0, len(order), 256):
        chosen = order[start : start + 256]
        ids, mask = langid_data.pad([rows[i] for i in chosen])
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        onnx_logits[chosen] = session.run(["logits"], feed)[0]
        with torch.no_grad():
            torch_logits[chosen] = encoder(ids, mask)[1].numpy()
    _same_argmax(onnx_logits, torch_logits)
    np.testing.assert_array_equal(torch_logits.argmax(1), encoder_predictions["new_phrases"])
    assert (onnx_logits.argmax(1) == new.labels).mean() >= 0.95
    labels = (exported / "transformer_encoder" / "labels.txt").read_text().split()
    assert labels == list(langid_data.LANGUAGES)  # the class order the encoder was trained in


def test_generator_onnx_matches_pytorch(
    exported: Path, generator: SaganGenerator, classifier: SeCnnClassifier
) -> None:
    z, labels = gan_eval.latents(GENERATOR_SAMPLES, generator.config.z_dim)
    onnx_images = _session(exported, "sagan_generator").run(
        ["image"], {"z": z.numpy(), "class_label": labels.numpy()}
    )[0]
    with torch.no_grad():
        torch_images = generator(z, labels)[0].numpy()
    np.testing.assert_allclose(onnx_images, torch_images, atol=1e-4)
    # And the ONNX images are the requested digits as often as the PyTorch ones.
    predicted, _ = gan_eval.classify_and_embed(
        classifier, digits.from_generator_space(torch.from_numpy(onnx_images))
    )
    assert (predicted == labels.reshape(-1)).float().mean().item() >= 0.95
