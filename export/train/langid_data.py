"""Language-identification phrases sampled from ``wordfreq``'s bundled word lists.

Each language contributes its :data:`VOCABULARY_SIZE` most frequent purely alphabetic words
(``str.isalpha``: no digits, apostrophes or symbols) with their wordfreq frequencies. A
phrase is 3 to 8 words drawn independently in proportion to frequency, joined by spaces;
half of them start with a capital letter, as typed text does.

Splits, all with fixed seeds (independent of the training seed):

- a global :data:`HELD_OUT_FRACTION` of distinct word *strings* is held out of training in
  every language at once, so an "unseen" word is unseen in all ten languages. Words among
  any language's :data:`PROTECTED_TOP` most frequent are never held out: a shipped model
  that never saw "the" or "und" would be a poor model, and the unseen-word test is meant to
  measure generalisation to new content words, not to missing function words;
- ``train``: phrases over the remaining words (the NB baseline trains on exactly these);
- ``new_phrases``: new phrases over the training vocabulary, exact training phrases removed;
- ``unseen_words``: phrases built only from held-out words.

Tokens are the model's byte-level ids (``byte_tokenizer_spec``): BOS, UTF-8 bytes + 4, EOS,
truncated to ``max_length`` keeping the first ``max_length - 2`` bytes, padded with 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from export.models.transformer_encoder import (
    BOS_ID,
    BYTE_OFFSET,
    DEFAULT_LABELS,
    EOS_ID,
    PAD_ID,
    EncoderConfig,
)

LANGUAGES: tuple[str, ...] = DEFAULT_LABELS  # the encoder's labels, in class order
VOCABULARY_SIZE = 10_000
HELD_OUT_FRACTION = 0.2
PROTECTED_TOP = 100
MIN_WORDS, MAX_WORDS = 3, 8
WORDS_SEED = 7001  # which word strings are held out
TRAIN_SEED, NEW_PHRASES_SEED, UNSEEN_SEED = 7002, 7003, 7004
TRAIN_PER_LANGUAGE = 20_000
TEST_PER_LANGUAGE = 500


@dataclass(frozen=True)
class WordPool:
    """Words of one language and their sampling probabilities (summing to 1)."""

    words: tuple[str, ...]
    probabilities: np.ndarray


@dataclass(frozen=True)
class Phrases:
    """Texts, class indices [N] and word counts [N]."""

    texts: list[str]
    labels: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


@lru_cache(maxsize=1)
def vocabularies() -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Per language: its top alphabetic words and their wordfreq frequencies."""
    import wordfreq

    result = {}
    for language in LANGUAGES:
        words = tuple(w for w in wordfreq.top_n_list(language, VOCABULARY_SIZE) if w.isalpha())
        frequencies = np.array([wordfreq.word_frequency(w, language) for w in words])
        result[language] = (words, frequencies)
    return result


@lru_cache(maxsize=1)
def held_out_words() -> frozenset[str]:
    """The globally held-out word strings (a fixed random fraction of the union)."""
    protected = {w for words, _ in vocabularies().values() for w in words[:PROTECTED_TOP]}
    union = sorted({w for words, _ in vocabularies().values() for w in words} - protected)
    rng = np.random.default_rng(WORDS_SEED)
    chosen = rng.random(len(union)) < HELD_OUT_FRACTION
    return frozenset(w for w, held in zip(union, chosen) if held)


def word_pools(held_out: bool) -> dict[str, WordPool]:
    """Per language, the training words (``held_out=False``) or the held-out ones."""
    excluded = held_out_words()
    pools = {}
    for language, (words, frequencies) in vocabularies().items():
        keep = np.array([(w in excluded) == held_out for w in words])
        chosen = frequencies[keep]
        pools[language] = WordPool(
            tuple(w for w, k in zip(words, keep) if k), chosen / chosen.sum()
        )
    return pools


def sample_phrases(pools: dict[str, WordPool], per_language: int, seed: int) -> Phrases:
    """``per_language`` phrases per language, 3-8 words drawn by frequency, in class order."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    labels, lengths = [], []
    for label, language in enumerate(LANGUAGES):
        pool = pools[language]
        counts = rng.integers(MIN_WORDS, MAX_WORDS + 1, size=per_language)
        picks = rng.choice(len(pool.words), size=int(counts.sum()), p=pool.probabilities)
        capitalise = rng.random(per_language) < 0.5
        start = 0
        for count, upper in zip(counts, capitalise):
            text = " ".join(pool.words[i] for i in picks[start : start + count])
            start += count
            texts.append(text[:1].upper() + text[1:] if upper else text)
        labels.append(np.full(per_language, label))
        lengths.append(counts)
    return Phrases(texts, np.concatenate(labels), np.concatenate(lengths))


def words_by_length(pools: dict[str, WordPool]) -> dict[tuple[str, int], tuple[str, ...]]:
    """Training words grouped by (language, UTF-8 length in bytes)."""
    groups: dict[tuple[str, int], list[str]] = {}
    for language, pool in pools.items():
        for word in pool.words:
            groups.setdefault((language, len(word.encode("utf-8"))), []).append(word)
    return {key: tuple(words) for key, words in groups.items()}


def swap_words(
    texts: list[str],
    labels: np.ndarray,
    groups: dict[tuple[str, int], tuple[str, ...]],
    rate: float,
    rng: np.random.Generator,
) -> list[str]:
    """Training augmentation: each word, with chance ``rate``, becomes a word of the same
    language and the same byte length drawn uniformly from the training vocabulary.

    Frequency sampling shows the model the same few hundred words over and over; uniform
    draws show it the long tail, so it learns spelling patterns rather than memorising
    frequent words. Same byte length keeps every phrase's token count, so the length-bucketed
    batches stay free of padding. Only training words are used: held-out words stay unseen.
    """
    swapped = []
    for text, label in zip(texts, labels):
        language = LANGUAGES[label]
        words = text.split(" ")
        capital = text[:1].isupper()
        for i in np.flatnonzero(rng.random(len(words)) < rate):
            same = groups.get((language, len(words[i].lower().encode("utf-8"))), ())
            if same:
                words[i] = same[rng.integers(len(same))]
        joined = " ".join(words)
        if capital:
            joined = joined[:1].upper() + joined[1:]
        swapped.append(joined)
    return swapped


def _without(phrases: Phrases, seen: set[str]) -> Phrases:
    keep = [i for i, text in enumerate(phrases.texts) if text.lower() not in seen]
    return Phrases(
        [phrases.texts[i] for i in keep], phrases.labels[keep], phrases.lengths[keep]
    )


@dataclass(frozen=True)
class LangIdData:
    train: Phrases
    new_phrases: Phrases
    unseen_words: Phrases


def build_splits(
    train_per_language: int = TRAIN_PER_LANGUAGE, test_per_language: int = TEST_PER_LANGUAGE
) -> LangIdData:
    """The three splits; the same every time for the same sizes."""
    train = sample_phrases(word_pools(held_out=False), train_per_language, TRAIN_SEED)
    seen = {text.lower() for text in train.texts}
    new = sample_phrases(word_pools(held_out=False), test_per_language, NEW_PHRASES_SEED)
    unseen = sample_phrases(word_pools(held_out=True), test_per_language, UNSEEN_SEED)
    return LangIdData(train, _without(new, seen), unseen)


def encode(texts: list[str], config: EncoderConfig | None = None) -> list[list[int]]:
    """Byte-level ids exactly as the served tokenizer: BOS, bytes + 4 (truncated), EOS."""
    config = config or EncoderConfig()
    room = config.max_length - 2
    return [
        [BOS_ID, *(b + BYTE_OFFSET for b in text.encode("utf-8")[:room]), EOS_ID]
        for text in texts
    ]


def pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, longest row], padded with PAD_ID / 0."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, (ids != PAD_ID).long()
