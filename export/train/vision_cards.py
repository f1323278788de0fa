"""Model-card sections for the vision-attention classifiers (see :mod:`export.train.cards`).

Every card carries the same comparison table: the model beside the shipped SE-CNN, both
measured in the training run that wrote the card (held-out accuracy, parameters, ONNX Runtime
CPU latency at batch 1 and 32 on one intra-op thread, training time).
"""

from __future__ import annotations

from typing import Any


def _threads(m: dict[str, Any]) -> str:
    n = m["environment"]["threads"]
    return f"{n} CPU thread{'s' if n != 1 else ''}"


def _row(name: str, accuracy: float, parameters: int, latency: dict[str, float], seconds: float) -> str:
    return (
        f"| {name} | {accuracy:.2%} | {parameters:,} | {latency['batch_1_ms']:.2f} ms | "
        f"{latency['batch_32_ms']:.2f} ms | {seconds:.0f} s |"
    )


def comparison(m: dict[str, Any], accuracy_head: str = "held-out accuracy") -> str:
    """This model and the SE-CNN, side by side (plus any twin the run trained)."""
    ref = m["se_cnn"]
    lines = [
        f"| model | {accuracy_head} | parameters | ORT CPU batch 1 | ORT CPU batch 32 | training |",
        "|---|---|---|---|---|---|",
        _row(f"**{m['model']}**", m["held_out"]["accuracy"], m["parameters"], m["latency"],
             m["training"]["seconds"]),
    ]
    for twin in m.get("twins", []):
        lines.append(_row(twin["name"], twin["accuracy"], twin["parameters"], twin["latency"], twin["seconds"]))
    lines.append(_row("se_cnn_classifier (shipped)", ref["accuracy"], ref["parameters"], ref["latency"],
                      ref["train_seconds"]))
    return "\n".join(lines)


def _per_digit(held: dict[str, Any]) -> str:
    lines = ["| digit | accuracy |", "|---|---|"]
    lines += [f"| {d} | {a:.0%} |" for d, a in held["per_class_accuracy"].items()]
    return "\n".join(lines)


def _recipe(m: dict[str, Any], augmentation: str) -> str:
    run = m["training"]
    return (
        f"`{m.get('command', '')}` — {run['epochs']} epochs ({run['steps']} steps, batch "
        f"{run['batch_size']}), AdamW (weight decay {run['weight_decay']}), one-cycle LR to "
        f"{run['max_lr']}, label smoothing {run['label_smoothing']}, {augmentation}, "
        f"{run['precision']} forward pass, seed {run['seed']}; **{run['seconds']:.0f} s** on {_threads(m)}."
    )


DIGITS_DATA = (
    "- {source}; {split} (seed {split_seed}): {train:,} training images, {held_out:,} held out "
    "(100 per digit) — the SE-CNN's split.\n"
    "- Input: 1x{side}x{side}, pixels in [0, 1] then `(x - 0.1307) / 0.3081` — exactly the served "
    "preprocess (`attnserve.preprocess` in config.pbtxt)."
)

LATENCY_NOTE = (
    "Latency: median of 30 `InferenceSession.run` calls of the exported graph (ONNX Runtime CPU, "
    "one intra-op thread, after warm-up), measured in the training run on the machine it names; "
    "the server adds its own per-request cost on top (see bench/)."
)


def cbam_card(m: dict[str, Any]) -> list[str]:
    held = m["held_out"]
    return [
        "# cbam_classifier — handwritten digit classifier (CBAM)",
        "Convolutional Block Attention Module (Woo et al., ECCV 2018, arXiv:1807.06521) after each "
        "of three conv stages (32/64/128 channels, two 3x3 convs each): channel attention from "
        "average- and max-pooled descriptors through one shared MLP, then spatial attention from "
        "a 7x7 convolution over the channel-wise mean and max. Served outputs: `probabilities`, "
        "`logits`, `channel_weights` (every stage's channel attention) and `spatial_attention_0..2` "
        "(28x28, 14x14, 7x7 maps in [0, 1]).",
        "## Data",
        DIGITS_DATA.format(side=28, **m["data"]),
        "## Training",
        _recipe(m, "random affine augmentation (rotation ±12°, shift ±2.5 px, scale 0.9–1.1, shear) "
                "— the SE-CNN's recipe"),
        "## Held-out results",
        f"Accuracy on the 1,000 held-out images: **{held['accuracy']:.2%}** ({held['errors']} errors); "
        f"training accuracy {m['train_accuracy']:.2%}.",
        comparison(m),
        LATENCY_NOTE,
        _per_digit(held),
        f"Confusion matrix (rows true, columns predicted) is in `{m['model']}.metrics.json`.",
        "## Limits",
        "- Trained on 4,000 MNIST digits only (centred, size-normalised, white on black); prepare "
        "other images the MNIST way first.\n"
        "- The held-out set is 1,000 images: one error moves accuracy by 0.1 point, so the CBAM "
        "and SE-CNN figures are within noise of each other unless they differ by several errors.\n"
        "- The spatial maps show where each stage rescaled its features, not a saliency proof.",
    ]


def headline(m: dict[str, Any]) -> str:
    held = m["held_out"]
    line = f"held-out accuracy {held['accuracy']:.2%} ({held['errors']} errors in 1,000)"
    for twin in m.get("twins", []):
        line += f"; {twin['name']} {twin['accuracy']:.2%}"
    return line + f"; SE-CNN {m['se_cnn']['accuracy']:.2%}"


CARDS = {"cbam_classifier": cbam_card}
