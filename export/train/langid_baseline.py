"""The yardstick for the encoder: character 1-3-gram multinomial Naive Bayes (scikit-learn).

Trained on exactly the encoder's training phrases and measured in the same run on the same
two test splits. Its smoothing ``alpha`` is chosen on a validation tenth of the training
phrases (never on a test split), then the model is refitted on all of them, so the baseline
is as strong as this family gets without peeking.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export.train.langid_data import LANGUAGES, MAX_WORDS, MIN_WORDS, Phrases

ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0)
VALIDATION_SEED = 7010


def fit_baseline(train: Phrases) -> tuple[Any, dict[str, Any]]:
    """(fitted pipeline, how alpha was chosen)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    # char_wb: n-grams inside word boundaries (padded with spaces), the classic lang-ID set.
    # Counting n-grams is the slow part and uses no labels, so it is done once for all alphas.
    vectorizer = CountVectorizer(analyzer="char_wb", ngram_range=(1, 3), lowercase=True)
    counts = vectorizer.fit_transform(train.texts)
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(train))
    cut = len(order) // 10
    val, fit = order[:cut], order[cut:]
    scores = {}
    for alpha in ALPHAS:
        nb = MultinomialNB(alpha=alpha).fit(counts[fit], train.labels[fit])
        scores[alpha] = float((nb.predict(counts[val]) == train.labels[val]).mean())
    best = max(ALPHAS, key=lambda a: scores[a])
    model = make_pipeline(vectorizer, MultinomialNB(alpha=best).fit(counts, train.labels))
    validation = {str(a): round(s, 4) for a, s in scores.items()}
    chosen = {"alpha": best, "validation_accuracy": validation}
    return model, chosen


def report(predicted: np.ndarray, phrases: Phrases) -> dict[str, Any]:
    """Accuracy overall, per language, per phrase length, and the confusion matrix."""
    labels = phrases.labels
    correct = predicted == labels
    confusion = np.zeros((len(LANGUAGES), len(LANGUAGES)), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return {
        "phrases": int(len(labels)),
        "accuracy": round(float(correct.mean()), 4),
        "per_language": {
            code: round(float(correct[labels == i].mean()), 4) for i, code in enumerate(LANGUAGES)
        },
        "by_length": {
            str(n): round(float(correct[phrases.lengths == n].mean()), 4)
            for n in range(MIN_WORDS, MAX_WORDS + 1)
            if (phrases.lengths == n).any()
        },
        "confusion_matrix": confusion.tolist(),  # rows: true language, columns: predicted
    }
