"""Model cards (``<out>/<model>.md``) written from the metrics of the run that made them.

The card is generated, not hand-edited, so its figures can never drift from the weights
next to it: rerunning the training rewrites both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _threads(m: dict[str, Any]) -> str:
    n = m["environment"]["threads"]
    return f"{n} CPU thread{'s' if n != 1 else ''}"


def headline(metrics: dict[str, Any]) -> str:
    """The held-out figures that decide whether the weights ship."""
    held = metrics["held_out"]
    name = metrics["model"]
    from export.train import vision_cards

    if name in vision_cards.CARDS:
        return vision_cards.headline(metrics)
    if name.startswith("langid_"):
        from export.train.family_card import headline as family_headline

        return family_headline(metrics)
    if name == "se_cnn_classifier":
        return f"held-out accuracy {held['accuracy']:.2%} ({held['errors']} errors in 1,000)"
    if name == "transformer_encoder":
        new, unseen = held["new_phrases"], held["unseen_words"]
        base = metrics["baseline"]
        return (
            f"new phrases {new['accuracy']:.2%} (NB {base['new_phrases']['accuracy']:.2%}), "
            f"unseen words {unseen['accuracy']:.2%} (NB {base['unseen_words']['accuracy']:.2%})"
        )
    return (
        f"classified as requested {held['classified_as_requested']:.2%}, "
        f"FID (SE-CNN features) {held['fid']:.2f} vs untrained {held['fid_untrained']:.2f}"
    )


def _table(rows: list[tuple[str, str]], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def _se_cnn(m: dict[str, Any]) -> list[str]:
    held, data, run = m["held_out"], m["data"], m["training"]
    per_class = [(d, f"{a:.0%}") for d, a in held["per_class_accuracy"].items()]
    return [
        "# se_cnn_classifier — handwritten digit classifier (SE-CNN)",
        "Squeeze-and-excitation CNN (Hu et al., 2018), default `SeCnnConfig` "
        "(stages 32/64/128, two 3x3 convs each, SE after each stage).",
        "## Data",
        f"- {data['source']}; {data['split']} (seed {data['split_seed']}): "
        f"{data['train']:,} training images, {data['held_out']:,} held out (100 per digit).\n"
        f"- scikit-learn 8x8 digits added: {'yes' if data['extra_sklearn_digits'] else 'no'}.\n"
        "- Input: 1x28x28, pixels in [0, 1] then `(x - 0.1307) / 0.3081` — exactly the "
        "served preprocess (`attnserve.preprocess` in config.pbtxt).",
        "## Training",
        f"`{m.get('command', '')}` — {run['epochs']} epochs ({run['steps']} steps, batch "
        f"{run['batch_size']}), AdamW (weight decay {run['weight_decay']}), one-cycle LR to "
        f"{run['max_lr']}, label smoothing {run['label_smoothing']}, random affine augmentation "
        f"(rotation ±12°, shift ±2.5 px, scale 0.9–1.1, shear), seed {run['seed']}; "
        f"{run['seconds']:.0f} s on {_threads(m)}.",
        "## Held-out results",
        f"Accuracy on the 1,000 held-out images: **{held['accuracy']:.2%}** "
        f"({held['errors']} errors); training accuracy {m['train_accuracy']:.2%}.",
        _table(per_class, ("digit", "accuracy")),
        "Confusion matrix (rows true, columns predicted) is in `se_cnn_classifier.metrics.json`.",
        "## Limits",
        "- Trained on 4,000 MNIST digits only: centred, size-normalised, white-on-black "
        "strokes. Photographs, black-on-white scans or digits that are not centred in a "
        "20x20 box must be prepared the MNIST way first; expect much lower accuracy otherwise.\n"
        "- The held-out set is 1,000 images, so one error moves accuracy by 0.1 point.\n"
        "- Not a calibrated probability model (label smoothing softens the probabilities).",
    ]


def write_card(out: Path, metrics: dict[str, Any]) -> Path:
    """Write ``<out>/<model>.md`` from ``metrics``; returns the path."""
    name = metrics["model"]
    from export.train import vision_cards

    if name in vision_cards.CARDS:
        sections = vision_cards.CARDS[name](metrics)
    elif name.startswith("langid_"):
        from export.train.family_card import family_card

        sections = family_card(metrics, out)
    elif name == "se_cnn_classifier":
        sections = _se_cnn(metrics)
    elif name == "transformer_encoder":
        from export.train.card_text import encoder_card

        sections = encoder_card(metrics)
    else:
        from export.train.card_text import generator_card

        sections = generator_card(metrics)
    path = out / f"{name}.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path
