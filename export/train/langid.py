"""Train the transformer encoder for language identification of short phrases.

Ten languages (the encoder's default labels), 3-8-word phrases sampled by frequency from
wordfreq (see :mod:`export.train.langid_data`), byte-level tokens exactly as served. Recipe:
AdamW, linear warm-up then cosine decay, gradient clipping, batches bucketed by length so
little compute goes to padding. Measured on two test splits against a character n-gram
Naive Bayes baseline trained on the same phrases in the same run.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from export.models.transformer_encoder import BYTE_OFFSET, EncoderConfig, TransformerEncoder
from export.train import common, langid_baseline, langid_data, plots
from export.train.langid_init import local_ngram_init
from export.train.langid_data import LANGUAGES, Phrases

NAME = "transformer_encoder"
CONFUSION_PNG = "langid_confusion.png"


@dataclass(frozen=True)
class EncoderTraining:
    """Hyper-parameters of one run (recorded in the metrics file)."""

    steps: int = 12000
    batch_size: int = 64
    max_lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    train_per_language: int = langid_data.TRAIN_PER_LANGUAGE
    seed: int = 1706
    checkpoint_every: int = 500  # steps
    word_swap: float = 0.3  # chance each word is replaced by a uniform vocabulary word
    byte_noise: float = 0.1  # chance each byte token is swapped for a random byte (regulariser)
    local_init: bool = True  # first-layer heads start on fixed neighbours (langid_init)
    precision: str = "auto"  # auto: bf16 autocast where the CPU has bf16 hardware


def build_model(seed: int) -> TransformerEncoder:
    torch.manual_seed(seed)
    config = EncoderConfig()
    if config.labels != LANGUAGES:
        raise AssertionError(f"encoder labels {config.labels} != trained languages {LANGUAGES}")
    return TransformerEncoder(config)


def batch_plan(lengths: np.ndarray, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless batches of row indices, epoch after epoch, each epoch seeded by its number.

    Rows are shuffled, cut into pools of 50 batches, sorted by length inside a pool (so a
    batch pads to about its own length) and the batches are shuffled again.
    """
    pool = batch_size * 50
    for epoch in itertools.count():
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(lengths))
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        for index in rng.permutation(len(batches)):
            yield batches[index]


def corrupt_bytes(ids: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Swap each byte token for a random byte with probability ``rate`` (BOS/EOS/PAD kept).

    Forces the model to spread its evidence over many n-grams instead of memorising whole
    words, which is what generalising to unseen words needs.
    """
    is_byte = ids >= BYTE_OFFSET
    swap = (torch.rand(ids.shape, generator=generator) < rate) & is_byte
    random = torch.randint(BYTE_OFFSET, BYTE_OFFSET + 256, ids.shape, generator=generator)
    return torch.where(swap, random, ids)


@torch.no_grad()
def predict(model: TransformerEncoder, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Class index per text (eval mode), batching texts of similar length together."""
    model.eval()
    rows = langid_data.encode(texts, model.config)
    order = np.argsort([len(r) for r in rows], kind="stable")
    predicted = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        ids, mask = langid_data.pad([rows[i] for i in chosen])
        predicted[chosen] = model(ids, mask)[1].argmax(dim=1).numpy()
    return predicted


def evaluate(model: TransformerEncoder, data: langid_data.LangIdData) -> dict[str, Any]:
    return {
        "new_phrases": langid_baseline.report(
            predict(model, data.new_phrases.texts), data.new_phrases
        ),
        "unseen_words": langid_baseline.report(
            predict(model, data.unseen_words.texts), data.unseen_words
        ),
    }


def baseline(data: langid_data.LangIdData) -> dict[str, Any]:
    """The char n-gram Naive Bayes yardstick, fitted on ``data.train``, on both test splits."""
    model, chosen = langid_baseline.fit_baseline(data.train)
    result: dict[str, Any] = {"model": "char_wb 1-3-gram counts + MultinomialNB", **chosen}
    for split in ("new_phrases", "unseen_words"):
        phrases: Phrases = getattr(data, split)
        result[split] = langid_baseline.report(model.predict(phrases.texts), phrases)
    return result


def train(
    options: EncoderTraining, out: Path, checkpoint_dir: Path, resume: bool = False
) -> dict[str, Any]:
    """Train, write weights, metrics and the confusion picture under ``out``."""
    common.seed_everything(options.seed)
    precision = common.resolve_precision(options.precision)
    data = langid_data.build_splits(options.train_per_language)
    rows = langid_data.encode(data.train.texts)
    labels = torch.from_numpy(data.train.labels)
    model = build_model(options.seed)
    if options.local_init:
        local_ngram_init(model, torch.Generator().manual_seed(options.seed))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n != "positions"]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n == "positions"]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": options.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=options.max_lr,
        betas=(0.9, 0.98),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: common.cosine_warmup(step, options.steps, options.warmup_steps, floor=0.02),
    )
    state = {"model": model, "optimizer": optimizer, "schedule": schedule}
    checkpoints = common.Checkpointer(checkpoint_dir, NAME)
    start = checkpoints.load(state) if resume else 0
    plan = batch_plan(np.array([len(r) for r in rows]), options.batch_size, options.seed)
    plan = itertools.islice(plan, start, options.steps)  # a resumed run continues the plan
    noise = torch.Generator().manual_seed(options.seed + start)
    swap_rng = np.random.default_rng([options.seed, start])
    groups = langid_data.words_by_length(langid_data.word_pools(held_out=False))
    started = time.perf_counter()
    model.train()
    with tqdm(total=options.steps, initial=start, desc=NAME, file=sys.stderr) as bar:
        for step, chosen in enumerate(plan, start=start):
            if options.word_swap > 0:
                texts = langid_data.swap_words(
                    [data.train.texts[i] for i in chosen],
                    data.train.labels[chosen],
                    groups,
                    options.word_swap,
                    swap_rng,
                )
                ids, mask = langid_data.pad(langid_data.encode(texts))
            else:
                ids, mask = langid_data.pad([rows[i] for i in chosen])
            if options.byte_noise > 0:
                ids = corrupt_bytes(ids, options.byte_noise, noise)
            with common.autocast(precision):
                logits = model(ids, mask)[1]
            loss = F.cross_entropy(
                logits.float(), labels[chosen], label_smoothing=options.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
            bar.update(1)
            if (step + 1) % options.checkpoint_every == 0 or step + 1 == options.steps:
                checkpoints.save(step + 1, state)
    seconds = time.perf_counter() - started
    common.save_weights(model.eval(), out / f"{NAME}.safetensors")
    shipped = common.load_weights_into(build_model(0), out / f"{NAME}.safetensors")
    held_out = evaluate(shipped, data)
    nb = baseline(data)
    plots.confusion_matrices(
        {
            f"encoder, new phrases ({held_out['new_phrases']['accuracy']:.1%})": held_out[
                "new_phrases"
            ]["confusion_matrix"],
            f"encoder, unseen words ({held_out['unseen_words']['accuracy']:.1%})": held_out[
                "unseen_words"
            ]["confusion_matrix"],
        },
        LANGUAGES,
        out / CONFUSION_PNG,
    )
    return {
        "model": NAME,
        "data": {
            "source": "wordfreq bundled word lists",
            "languages": list(LANGUAGES),
            "vocabulary_per_language": langid_data.VOCABULARY_SIZE,
            "held_out_word_fraction": langid_data.HELD_OUT_FRACTION,
            "protected_top_words": langid_data.PROTECTED_TOP,
            "words_per_phrase": [langid_data.MIN_WORDS, langid_data.MAX_WORDS],
            "train_phrases": len(data.train),
            "new_phrases": len(data.new_phrases),
            "unseen_word_phrases": len(data.unseen_words),
            "seeds": {
                "words": langid_data.WORDS_SEED,
                "train": langid_data.TRAIN_SEED,
                "new_phrases": langid_data.NEW_PHRASES_SEED,
                "unseen_words": langid_data.UNSEEN_SEED,
            },
        },
        "training": {
            **asdict(options),
            "precision": precision,
            "phrases_seen": options.steps * options.batch_size,
            "seconds": round(seconds, 1),
        },
        "held_out": held_out,
        "baseline": nb,
        "pictures": [CONFUSION_PNG],
        "environment": common.environment(),
    }
