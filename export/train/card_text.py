"""Model-card sections for the encoder and the generator (see :mod:`export.train.cards`)."""

from __future__ import annotations

from typing import Any


def _threads(m: dict[str, Any]) -> str:
    n = m["environment"]["threads"]
    return f"{n} CPU thread{'s' if n != 1 else ''}"


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _split_table(m: dict[str, Any], key: str, head: str) -> str:
    """Rows ``key`` (per_language / by_length): encoder vs NB on both splits."""
    held, base = m["held_out"], m["baseline"]
    lines = [
        f"| {head} | encoder, new phrases | NB, new phrases | encoder, unseen words | "
        "NB, unseen words |",
        "|---|---|---|---|---|",
    ]
    for row in held["new_phrases"][key]:
        cells = [
            _pct(src[split][key][row])
            for split in ("new_phrases", "unseen_words")
            for src in (held, base)
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def encoder_card(m: dict[str, Any]) -> list[str]:
    held, base, data, run = m["held_out"], m["baseline"], m["data"], m["training"]
    new, unseen = held["new_phrases"], held["unseen_words"]
    return [
        "# transformer_encoder — language identification of short phrases",
        "Pre-LN Transformer encoder (Vaswani et al., 2017), default `EncoderConfig` (4 layers, "
        "d_model 128, 4 heads, byte-level tokens), mean-pooled, 10-way linear head. Labels: "
        + ", ".join(f"`{c}`" for c in data["languages"])
        + " (`labels.txt` in the exported model).",
        "## Data",
        "\n".join(
            [
                f"- {data['source']}: each language's {data['vocabulary_per_language']:,} most "
                "frequent words, purely alphabetic ones kept, with their frequencies.",
                f"- Phrases of {data['words_per_phrase'][0]}–{data['words_per_phrase'][1]} words "
                "drawn independently in proportion to word frequency, joined by spaces; half "
                "start with a capital letter.",
                f"- {data['held_out_word_fraction']:.0%} of distinct word strings are held out "
                "of training in every language (never one of any language's "
                f"{data['protected_top_words']} most frequent words).",
                f"- Training: {data['train_phrases']:,} phrases. Tests: {data['new_phrases']:,} "
                "new phrases over the training vocabulary (exact training phrases removed) and "
                f"{data['unseen_word_phrases']:,} phrases made only of held-out words. Seeds "
                f"{data['seeds']} — fixed, independent of the training seed.",
                "- Tokens: BOS, UTF-8 bytes + 4, EOS, padding 0 — exactly `tokenizer.json`.",
            ]
        ),
        "## Training",
        f"`{m.get('command', '')}` — {run['steps']:,} steps of batch {run['batch_size']} "
        f"({run['phrases_seen']:,} phrases seen), AdamW (betas 0.9/0.98, weight decay "
        f"{run['weight_decay']}), {run['warmup_steps']} warm-up steps to {run['max_lr']} then "
        f"cosine decay, label smoothing {run['label_smoothing']}, gradient clipping "
        f"{run['grad_clip']}, length-bucketed batches, word swap {run['word_swap']} (each "
        "word replaced by a uniformly drawn training word of the same language with that "
        f"chance), byte noise {run['byte_noise']} "
        "(each byte swapped for a random one with that chance), first-layer heads initialised "
        "on fixed neighbours (-1, +1, -2, +2; `export/train/langid_init.py`), "
        f"{run['precision']} autocast, seed {run['seed']}; "
        f"{run['seconds']:.0f} s on {_threads(m)}.",
        "## Held-out results",
        "\n".join(
            [
                f"- New phrases: **{new['accuracy']:.2%}** (baseline "
                f"{base['new_phrases']['accuracy']:.2%}).",
                f"- Unseen words: **{unseen['accuracy']:.2%}** (baseline "
                f"{base['unseen_words']['accuracy']:.2%}).",
                f"- Baseline: {base['model']} (scikit-learn), alpha {base['alpha']} chosen on a "
                "validation tenth of the training phrases, trained on the same phrases and "
                "measured in the same run.",
            ]
        ),
        "### Per language",
        _split_table(m, "per_language", "language"),
        "### By phrase length (words)",
        _split_table(m, "by_length", "words"),
        "Confusion matrices: `langid_confusion.png` (counts in "
        "`transformer_encoder.metrics.json`).",
        "## Limits",
        "\n".join(
            [
                "- Ten languages only: text in any other language is still assigned one of them.",
                "- Phrases are bags of independently drawn frequent words, not real sentences; "
                "numbers, punctuation, names and mixed-language text were never seen.",
                "- Short inputs (one or two words) are often ambiguous between related languages "
                "(es/pt, nl/de, sv); accuracy rises with length, as the table shows.",
                "- Inputs longer than 126 UTF-8 bytes are truncated by the tokenizer.",
            ]
        ),
    ]


def generator_card(m: dict[str, Any]) -> list[str]:
    held, data, run = m["held_out"], m["data"], m["training"]
    return [
        "# sagan_generator — class-conditional digit generator (SAGAN)",
        "Self-Attention GAN generator (Zhang et al., 2019), default `SaganConfig` "
        f"({data['generator']}), trained against a projection discriminator (Miyato & Koyama, "
        "2018) with spectral norm in both networks, hinge loss and two time-scale learning "
        "rates. The discriminator is training-only code and is not shipped.",
        "## Data",
        "\n".join(
            [
                f"- {data['source']}: the SE-CNN's {data['train']:,} training digits (the 1,000 "
                "held-out digits are kept for evaluation), padded 28x28 -> 32x32 and scaled to "
                "[-1, 1] — the served generator's `image` output space.",
                "- Labels: the digit (class 0–9).",
            ]
        ),
        "## Training",
        f"`{m.get('command', '')}` — {run['steps']:,} steps, batch {run['batch_size']}, "
        f"Adam betas {tuple(run['betas'])}, G lr {run['g_lr']}, D lr {run['d_lr']}, "
        f"discriminator base channels {run['d_channels']}, {run['precision']} autocast, "
        "standing batch-norm "
        f"statistics over {run['standing_batches']} batches before saving, seed {run['seed']}; "
        f"{run['seconds']:.0f} s on {_threads(m)}.",
        "## Held-out results",
        "\n".join(
            [
                f"- {held['samples']:,} seeded samples ({held['samples'] // 10} per digit): "
                f"the shipped SE-CNN classifies **{_pct(held['classified_as_requested'])}** as "
                "the requested digit "
                f"(untrained generator: {_pct(held['classified_as_requested_untrained'])}).",
                f"- Fréchet distance on SE-CNN penultimate features (128-d) against the "
                f"{held['fid_reference']}: **{held['fid']:.2f}**; untrained generator "
                f"{held['fid_untrained']:.2f}; held-out real vs training real digits "
                f"{held['fid_real_vs_real']:.2f} (the floor).",
                "- Per digit, classified as requested: "
                + ", ".join(f"{d}: {_pct(v)}" for d, v in held["per_class"].items())
                + ".",
                "- Samples: `sagan_samples.png` (one row per digit, ten latents each).",
            ]
        ),
        "## Limits",
        "\n".join(
            [
                "- 32x32 grayscale digits only, in MNIST's style; a toy-scale generator trained "
                "for minutes on CPU, not a general image model.",
                "- 'Classified as requested' and the Fréchet distance use the SE-CNN trained on "
                "the same 4,000 digits, so they measure agreement with that classifier, not "
                "human judgement; the grid is worth a look.",
                "- Latents far outside N(0, I) give poor images (no truncation trick is applied).",
            ]
        ),
    ]
