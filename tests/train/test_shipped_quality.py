"""The shipped weights, re-measured on their held-out data, clear the bars the issue set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export.models.sagan_generator import SaganGenerator
from export.models.se_cnn_classifier import SeCnnClassifier
from export.models.transformer_encoder import TransformerEncoder
from export.train import digits, gan_eval, langid, langid_data
from export.train.se_cnn import evaluate as evaluate_classifier
from export.weights import SHIPPED_DIR

GENERATOR_SAMPLES = 500


def _recorded(name: str) -> dict:
    return json.loads((SHIPPED_DIR / f"{name}.metrics.json").read_text())


def test_se_cnn_held_out_accuracy(classifier: SeCnnClassifier, digit_split: digits.DigitSplit) -> None:
    assert len(digit_split.test_labels) == 1000
    result = evaluate_classifier(classifier, digit_split.test_images, digit_split.test_labels)
    assert result["accuracy"] >= 0.98, result
    # The card's figure is this measurement (same images, same weights), give or take a tie.
    recorded = _recorded("se_cnn_classifier")["held_out"]["accuracy"]
    assert result["accuracy"] == pytest.approx(recorded, abs=0.002)


def test_held_out_digits_are_not_trained_on(digit_split: digits.DigitSplit) -> None:
    train = {bytes(row) for row in (digit_split.train_images * 255).round().byte().numpy()}
    test = [bytes(row) for row in (digit_split.test_images * 255).round().byte().numpy()]
    assert len(digit_split.train_labels) == 4000
    assert sum(row in train for row in test) == 0
    assert np.bincount(digit_split.test_labels.numpy()).tolist() == [100] * 10


def test_encoder_new_phrases_accuracy(
    encoder: TransformerEncoder, langid_splits: langid_data.LangIdData
) -> None:
    new = langid_splits.new_phrases
    predicted = langid.predict(encoder, new.texts)
    accuracy = float((predicted == new.labels).mean())
    assert accuracy >= 0.95
    recorded = _recorded("transformer_encoder")
    assert accuracy == pytest.approx(recorded["held_out"]["new_phrases"]["accuracy"], abs=0.002)
    assert recorded["held_out"]["new_phrases"]["phrases"] == len(new)


@pytest.mark.parametrize(
    "split",
    [
        # Known misses of the shipped weights (issue 6 stays open): the n-gram Naive Bayes of
        # the same run is slightly ahead on both splits. Strict, so each turns into a failure
        # to update the moment retrained weights get ahead.
        pytest.param("new_phrases", marks=pytest.mark.xfail(strict=True, reason="encoder 98.2% vs NB 98.5%")),
        pytest.param("unseen_words", marks=pytest.mark.xfail(strict=True, reason="encoder 96.1% vs NB 96.6%")),
    ],
)
def test_encoder_was_ahead_of_the_naive_bayes_baseline_in_its_run(split: str) -> None:
    recorded = _recorded("transformer_encoder")
    ours = recorded["held_out"][split]["accuracy"]
    baseline = recorded["baseline"][split]["accuracy"]
    assert ours > baseline, (split, ours, baseline)


def test_langid_test_splits_are_disjoint_from_training(
    langid_splits: langid_data.LangIdData,
) -> None:
    seen = {text.lower() for text in langid_splits.train.texts}
    assert not any(text.lower() in seen for text in langid_splits.new_phrases.texts)
    held_out = langid_data.held_out_words()
    train_words = {w.lower() for text in langid_splits.train.texts[:20000] for w in text.split()}
    assert not train_words & held_out
    unseen_words = {w.lower() for text in langid_splits.unseen_words.texts for w in text.split()}
    assert unseen_words <= held_out


def test_generator_samples_are_the_requested_digit(
    generator: SaganGenerator, classifier: SeCnnClassifier
) -> None:
    result, _ = gan_eval.judge(generator, classifier, GENERATOR_SAMPLES, generator.config.z_dim)
    assert result["accuracy"] >= 0.95, result
    assert min(result["per_class"].values()) >= 0.8, result  # no digit is left out
