"""Model cards of the attention family (langid_dot, langid_additive, langid_mha, langid_pair).

Written from the metrics of the run that made the weights (see :mod:`export.train.cards`); the
comparison section comes from ``bench/results/langid_family.json`` (one run measuring every
member side by side: ``python -m bench.langid_family``) when that file exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Written by bench/langid_family.py; the cards read it when it is there.
COMPARISON_PATH = Path(__file__).resolve().parents[2] / "bench" / "results" / "langid_family.json"

ATTENTION = {
    "langid_dot": "attention pooling with **scaled dot-product** scores, one head: a learned "
    "query q attends over the tokens with softmax(q·k / sqrt(d)) (Luong et al. 2015; the "
    "scaling of Vaswani et al. 2017)",
    "langid_additive": "attention pooling with **additive** scores, one head: "
    "vᵀ tanh(W q + U k) (Bahdanau et al. 2015)",
    "langid_mha": "one pre-LN **multi-head** self-attention layer (4 heads, scaled dot) then "
    "4-head attention pooling (Vaswani et al. 2017)",
    "langid_pair": "**cross-attention**: each token of the query phrase attends over the "
    "tokens of the source phrase (one head, scaled dot); the token, what it read, their "
    "product and difference feed an MLP averaged over the query (ESIM, Chen et al. 2017)",
}


def _threads(m: dict[str, Any]) -> str:
    n = m["environment"]["threads"]
    return f"{n} CPU thread{'s' if n != 1 else ''}"


def headline(m: dict[str, Any]) -> str:
    held = m["held_out"]
    new, unseen = held["new_phrases"], held["unseen_words"]
    if "baseline" not in m:
        return f"pairs from new phrases {new['accuracy']:.2%}, from unseen words {unseen['accuracy']:.2%}"
    base = m["baseline"]
    return (
        f"new phrases {new['accuracy']:.2%} (NB {base['new_phrases']['accuracy']:.2%}), "
        f"unseen words {unseen['accuracy']:.2%} (NB {base['unseen_words']['accuracy']:.2%})"
    )


def comparison_table(comparison: dict[str, Any]) -> str:
    """The side-by-side table (also in the README): one row per member plus the baseline."""
    lines = [
        "| model | attention | new phrases | unseen words | parameters | ORT b1 (ms) | "
        "ORT b32 (ms) | served p50 c=1 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in comparison["rows"]:
        def ms(key: str) -> str:
            value = row.get(key)
            return "—" if value is None else f"{value:.2f}"

        params = row.get("parameters")
        lines.append(
            f"| `{row['model']}` | {row['attention']} | {row['new_phrases']:.2%} | "
            f"{row['unseen_words']:.2%} | {'—' if params is None else f'{params:,}'} | "
            f"{ms('ort_b1_ms')} | {ms('ort_b32_ms')} | {ms('served_p50_ms')} |"
        )
    return "\n".join(lines)


def _comparison(path: Path = COMPARISON_PATH) -> list[str]:
    if not path.is_file():
        return []
    comparison = json.loads(path.read_text())
    text = [comparison_table(comparison)]
    pair = comparison.get("pair")
    if pair:
        text.append(
            f"`langid_pair` (\"same language?\" on pairs, {pair['parameters']:,} parameters): "
            f"{pair['new_phrases']:.2%} on pairs of new phrases, {pair['unseen_words']:.2%} on pairs of "
            f"unseen-word phrases; ORT b1 {pair['ort_b1_ms']:.2f} ms, b32 {pair['ort_b32_ms']:.2f} ms, "
            f"served p50 c=1 {pair['served_p50_ms']:.2f} ms."
        )
    text.append(" ".join(f"{k.capitalize()}: {v}." for k, v in comparison.get("method", {}).items()))
    text.append(f"Reproduce: `{comparison.get('command', 'python -m bench.langid_family')}` "
                "(bench/results/langid_family.md names the machine).")
    return ["## Side by side (one run)", "\n\n".join(text)]


def family_card(m: dict[str, Any], out: Path) -> list[str]:
    name, held, run, config = m["model"], m["held_out"], m["training"], m["config"]
    new, unseen = held["new_phrases"], held["unseen_words"]
    encoder = (
        f"byte embeddings plus hashed 2- to {config['ngram_orders']}-byte n-gram embeddings "
        f"({config['hash_buckets']:,} rows per order) and learned positions, d_model "
        f"{config['d_model']}"
    )
    sections = [
        f"# {name} — attention family member ({config['score']}, {config['heads']} head"
        f"{'s' if config['heads'] != 1 else ''})",
        f"Encoder: {encoder}. Attention: {ATTENTION[name]}. {m['parameters']:,} parameters. "
        "Model file: `export/models/langid_attention.py` (one config dataclass for the "
        "family); the members differ only in the attention layer.",
        "## Data",
        f"The transformer encoder's language-ID phrases and splits ({m['data']['source']}): "
        f"{m['data']['train_phrases']:,} training phrases; tests {m['data']['new_phrases']:,} "
        f"new phrases over the training vocabulary and {m['data']['unseen_word_phrases']:,} "
        "phrases made only of held-out words (see `transformer_encoder.md`). Tokens: BOS, "
        "UTF-8 bytes + 4, EOS, padding 0 — exactly `tokenizer.json`.",
        "## Training",
        f"`{m.get('command', '')}` — {run['steps']:,} steps of batch {run['batch_size']} "
        f"({run['phrases_seen']:,} phrases seen), AdamW (weight decay {run['weight_decay']} "
        f"outside the encoder), {run['warmup_steps']} warm-up steps to {run['max_lr']} then "
        f"cosine decay, gradient clipping {run['grad_clip']}, word swap {run['word_swap']}, "
        f"byte noise {run['byte_noise']}, {run['precision']} forward pass, seed {run['seed']}; "
        f"{run['seconds']:.0f} s on {_threads(m)}.",
    ]
    if "baseline" in m:
        base = m["baseline"]
        sections += [
            "## Held-out results",
            f"- New phrases: **{new['accuracy']:.2%}** (NB baseline "
            f"{base['new_phrases']['accuracy']:.2%}).\n"
            f"- Unseen words: **{unseen['accuracy']:.2%}** (NB baseline "
            f"{base['unseen_words']['accuracy']:.2%}).\n"
            f"- Baseline: {base['model']}, alpha {base['alpha']}, trained on the same phrases "
            "in the same run. Per-language and per-length figures: "
            f"`{name}.metrics.json`.",
        ]
    else:
        sections += [
            "## Held-out results",
            "Pairs: every phrase of a test split as the query, a partner from the same split "
            f"as the source (half the pairs share a language; seed {m['data']['pair_test_seed']}). "
            f"Encoder initialised from {m['data'].get('encoder_initialised_from') or 'scratch'}, "
            "then trained with the rest.\n\n"
            f"- Pairs from new phrases: **{new['accuracy']:.2%}** ({new['pairs']:,} pairs; "
            f"same {new['same_language_accuracy']:.2%}, different "
            f"{new['different_language_accuracy']:.2%}).\n"
            f"- Pairs from unseen words: **{unseen['accuracy']:.2%}** ({unseen['pairs']:,} pairs; "
            f"same {unseen['same_language_accuracy']:.2%}, different "
            f"{unseen['different_language_accuracy']:.2%}).",
        ]
    sections += _comparison()
    sections += [
        "## Limits",
        "- The transformer encoder's limits apply (ten languages, bags of frequent words, "
        "inputs cut at 126 UTF-8 bytes).\n"
        "- The attention picture shows where the pooling query (or the query token) looked; "
        "it is not an explanation of the decision (Jain & Wallace 2019).",
    ]
    return sections
