"""Train the attention family (export/models/langid_attention.py) on the language-ID phrases.

Same data, tokenizer, splits, augmentation and baseline as the encoder (export/train/langid.py):
only the model differs, so the figures compare attention layers and nothing else. The
classifiers (``langid_dot``, ``langid_additive``, ``langid_mha``) learn the ten languages;
``langid_pair`` learns "same language?" on pairs of phrases (a query and a source phrase,
half of the pairs from one language), and is measured on pairs drawn from the held-out splits.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from export.models import langid_attention as family
from export.train import common, langid, langid_data

CONFIGS: dict[str, family.AttentionConfig] = {
    "langid_dot": family.LANGID_DOT,
    "langid_additive": family.LANGID_ADDITIVE,
    "langid_mha": family.LANGID_MHA,
    "langid_pair": family.LANGID_PAIR,
}
PAIR_TEST_SEED = 7020  # which held-out phrases are paired (independent of the training seed)


@dataclass(frozen=True)
class AttentionTraining:
    """Hyper-parameters of one run (recorded in the metrics file)."""

    steps: int = 4000
    batch_size: int = 64
    max_lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    train_per_language: int = langid_data.TRAIN_PER_LANGUAGE
    seed: int = 1501
    checkpoint_every: int = 500
    word_swap: float = 0.3  # as the encoder: each word may become a uniform vocabulary word
    byte_noise: float = 0.05  # as the encoder: each byte may become a random byte
    precision: str = "auto"
    # The pair model starts from this member's trained encoder (its shipped weights, when
    # present): language-aware token states from the first step, so the cross-attention and the
    # comparison learn "same language?" instead of relearning bytes from pair labels alone.
    init_encoder_from: str | None = "langid_dot"


def build_model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    config = CONFIGS[name]
    if not config.cross and config.labels != langid_data.LANGUAGES:
        raise AssertionError(f"{name} labels {config.labels} != {langid_data.LANGUAGES}")
    return family.build(config)


def _pad(rows: list[list[int]]) -> torch.Tensor:
    return langid_data.pad(rows)[0]


@torch.no_grad()
def predict(model: nn.Module, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Class index per text for a classifier member (eval mode)."""
    return langid.predict(model, texts, batch_size)  # type: ignore[arg-type]


def pair_indices(
    labels: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows, source rows, same [0/1]): half the pairs from one language, the rest
    from two different ones, never a phrase paired with itself."""
    by_label = [np.flatnonzero(labels == k) for k in range(int(labels.max()) + 1)]
    query = rng.integers(0, len(labels), count)
    same = rng.random(count) < 0.5
    source = np.empty(count, dtype=np.int64)
    for i, (q, s) in enumerate(zip(query, same)):
        own = labels[q]
        if s:
            pool = by_label[own]
        else:
            other = (own + rng.integers(1, len(by_label))) % len(by_label)
            pool = by_label[other]
        pick = pool[rng.integers(len(pool))]
        while pick == q:
            pick = pool[rng.integers(len(pool))]
        source[i] = pick
    return query, source, same.astype(np.int64)


@torch.no_grad()
def predict_pairs(
    model: nn.Module, queries: list[str], sources: list[str], batch_size: int = 256
) -> np.ndarray:
    """1 where the model says the two phrases share a language."""
    model.eval()
    config = model.config
    q_rows = langid_data.encode(queries, config)
    s_rows = langid_data.encode(sources, config)
    order = np.argsort([len(r) for r in q_rows], kind="stable")
    predicted = np.empty(len(q_rows), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        logits = model(_pad([q_rows[i] for i in chosen]), _pad([s_rows[i] for i in chosen]))[0]
        predicted[chosen] = logits.argmax(dim=1).numpy()
    return predicted


def pair_split(phrases: langid_data.Phrases, seed: int) -> dict[str, Any]:
    """One pair per phrase of a test split: the phrase as query, a partner as source."""
    rng = np.random.default_rng(seed)
    query, source, same = pair_indices(phrases.labels, len(phrases), rng)
    return {
        "queries": [phrases.texts[i] for i in query],
        "sources": [phrases.texts[i] for i in source],
        "same": same,
    }


def pair_report(predicted: np.ndarray, same: np.ndarray) -> dict[str, Any]:
    correct = predicted == same
    return {
        "pairs": int(len(same)),
        "accuracy": round(float(correct.mean()), 4),
        "same_language_accuracy": round(float(correct[same == 1].mean()), 4),
        "different_language_accuracy": round(float(correct[same == 0].mean()), 4),
    }


def evaluate(name: str, model: nn.Module, data: langid_data.LangIdData) -> dict[str, Any]:
    """Held-out figures: per-phrase accuracy (classifiers) or pair accuracy (pair model)."""
    if not CONFIGS[name].cross:
        return langid.evaluate(model, data)  # type: ignore[arg-type]
    result = {}
    for offset, split in enumerate(("new_phrases", "unseen_words")):
        pairs = pair_split(getattr(data, split), PAIR_TEST_SEED + offset)
        predicted = predict_pairs(model, pairs["queries"], pairs["sources"])
        result[split] = pair_report(predicted, pairs["same"])
    return result


def _batch_texts(
    texts: list[str],
    labels: np.ndarray,
    options: AttentionTraining,
    groups: dict[tuple[str, int], tuple[str, ...]],
    rng: np.random.Generator,
) -> list[str]:
    if options.word_swap > 0:
        return langid_data.swap_words(texts, labels, groups, options.word_swap, rng)
    return texts


def train(
    name: str,
    options: AttentionTraining,
    out: Path,
    checkpoint_dir: Path,
    resume: bool = False,
) -> dict[str, Any]:
    """Train member ``name``; write its weights under ``out``; return its metrics."""
    common.seed_everything(options.seed)
    precision = common.resolve_precision(options.precision)
    config = CONFIGS[name]
    data = langid_data.build_splits(options.train_per_language)
    train_texts, train_labels = data.train.texts, data.train.labels
    model = build_model(name, options.seed)
    initialised_from = _init_encoder(model, options, out) if config.cross else None
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "encoder" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "encoder" in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": options.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},  # embeddings, positions, norms, biases
        ],
        lr=options.max_lr,
        betas=(0.9, 0.98),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: common.cosine_warmup(step, options.steps, options.warmup_steps, floor=0.02),
    )
    state = {"model": model, "optimizer": optimizer, "schedule": schedule}
    checkpoints = common.Checkpointer(checkpoint_dir, name)
    start = checkpoints.load(state) if resume else 0
    lengths = np.array([len(t.encode("utf-8")) for t in train_texts])
    plan = langid.batch_plan(lengths, options.batch_size, options.seed)
    plan = itertools.islice(plan, start, options.steps)
    noise = torch.Generator().manual_seed(options.seed + start)
    rng = np.random.default_rng([options.seed, start])
    groups = langid_data.words_by_length(langid_data.word_pools(held_out=False))
    started = time.perf_counter()
    model.train()
    with tqdm(total=options.steps, initial=start, desc=name, file=sys.stderr) as bar:
        for step, chosen in enumerate(plan, start=start):
            texts = _batch_texts(
                [train_texts[i] for i in chosen], train_labels[chosen], options, groups, rng
            )
            ids = _pad(langid_data.encode(texts, config))
            if options.byte_noise > 0:
                ids = langid.corrupt_bytes(ids, options.byte_noise, noise)
            if config.cross:
                # Partners for this batch's phrases: half from the same language.
                _, partner, same = _partners(train_labels, chosen, rng)
                sources = _batch_texts(
                    [train_texts[i] for i in partner], train_labels[partner], options, groups, rng
                )
                source_ids = _pad(langid_data.encode(sources, config))
                if options.byte_noise > 0:
                    source_ids = langid.corrupt_bytes(source_ids, options.byte_noise, noise)
                targets = torch.from_numpy(same)
                with common.autocast(precision):
                    logits = model(ids, source_ids)[0]
            else:
                targets = torch.from_numpy(train_labels[chosen])
                with common.autocast(precision):
                    logits = model(ids, (ids != 0).long())[1]
            loss = F.cross_entropy(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update(1)
            if (step + 1) % options.checkpoint_every == 0 or step + 1 == options.steps:
                checkpoints.save(step + 1, state)
    seconds = time.perf_counter() - started
    common.save_weights(model.eval(), out / f"{name}.safetensors")
    shipped = common.load_weights_into(build_model(name, 0), out / f"{name}.safetensors")
    held_out = evaluate(name, shipped, data)
    result = {
        "model": name,
        "config": {k: v for k, v in asdict(config).items() if k != "labels"},
        "parameters": sum(p.numel() for p in shipped.parameters()),
        "data": {
            "source": "wordfreq bundled word lists",
            "train_phrases": len(data.train),
            "new_phrases": len(data.new_phrases),
            "unseen_word_phrases": len(data.unseen_words),
            **({"pair_test_seed": PAIR_TEST_SEED, "encoder_initialised_from": initialised_from}
               if config.cross else {}),
        },
        "training": {
            **asdict(options),
            "precision": precision,
            "phrases_seen": options.steps * options.batch_size,
            "seconds": round(seconds, 1),
        },
        "held_out": held_out,
        "environment": common.environment(),
    }
    if not config.cross:  # the yardstick, same phrases, same run
        result["baseline"] = langid.baseline(data)
    return result


def _partners(
    labels: np.ndarray, rows: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For given query rows: a partner each, half of them from the same language."""
    by_label = [np.flatnonzero(labels == k) for k in range(int(labels.max()) + 1)]
    same = rng.random(len(rows)) < 0.5
    partner = np.empty(len(rows), dtype=np.int64)
    for i, (q, s) in enumerate(zip(rows, same)):
        own = int(labels[q])
        other = own if s else (own + int(rng.integers(1, len(by_label)))) % len(by_label)
        partner[i] = by_label[other][rng.integers(len(by_label[other]))]
    return rows, partner, same.astype(np.int64)


def _init_encoder(model: nn.Module, options: AttentionTraining, out: Path) -> str | None:
    """Copy ``options.init_encoder_from``'s trained encoder into ``model`` (same shapes: the
    family shares its encoder); the path used, or None when there are no such weights."""
    source = options.init_encoder_from
    path = out / f"{source}.safetensors" if source else None
    if path is None or not path.is_file():
        return None
    from safetensors.torch import load_file

    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}
    model.encoder.load_state_dict(state, strict=True)
    return f"{source} ({path.name})"
