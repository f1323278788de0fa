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


def stn_card(m: dict[str, Any]) -> list[str]:
    held, data, run = m["held_out"], m["data"], m["training"]
    twin = m["twins"][0]
    d = data["distortion"]
    return [
        "# stn_classifier — distorted-digit classifier with a spatial transformer (STN)",
        "Spatial Transformer Network (Jaderberg et al., NeurIPS 2015, arXiv:1506.02025): a "
        "localisation net (two small convs, a 32-unit layer) predicts the six affine parameters "
        "`theta` from the 40x40 input, initialised to the identity; `affine_grid` + bilinear "
        "`grid_sample` cut a 24x24 rectified image out of the input, and a small CNN (16/32/64 "
        "channels, two 3x3 convs each) classifies it. Served outputs: `probabilities`, `logits`, "
        "`theta` [2, 3] and `rectified_image` [1, 24, 24] (what the CNN saw). `grid_sample` exports "
        "as ONNX `GridSample` (opset 18) and passes the parity check against PyTorch.",
        "## Data",
        f"- {data['source']}; the SE-CNN's split (seed {data['split_seed']}): {data['train']:,} training "
        f"digits, {data['held_out']:,} held out.\n"
        f"- Distorted MNIST: each digit centred on a {data['canvas']}x{data['canvas']} black canvas, then "
        f"rotated within ±{d['degrees']:.0f}°, scaled {d['scale'][0]}–{d['scale'][1]} and moved within "
        f"±{d['shift_px']:.0f} px (one random affine map). Training digits get a fresh distortion each "
        f"time they are drawn; the held-out digits are distorted once, seed {d['test_seed']}.\n"
        "- Input: 1x40x40, pixels in [0, 1] then `(x - 0.1307) / 0.3081` — the served preprocess "
        "(a bigger or smaller picture is resized to 40x40 by the server).",
        "## Training",
        _recipe(m, f"fresh distortions as augmentation, localisation net at {run['localisation_lr_scale']}x "
                "the learning rate"),
        f"The no-STN twin (the same CNN with `theta` fixed at the identity, so it sees the whole "
        f"canvas resampled to 24x24) was trained in the same run on the same batches: "
        f"{run['twin_seconds']:.0f} s. Both together: {run['seconds'] + run['twin_seconds']:.0f} s.",
        "## Held-out results",
        f"Accuracy on the 1,000 distorted held-out digits: **{held['accuracy']:.2%}** ({held['errors']} "
        f"errors), against **{twin['accuracy']:.2%}** for the twin without the transformer. On the "
        f"same digits undistorted (centred on the canvas): {m['held_out_undistorted']:.2%}.",
        comparison(m, "distorted held-out accuracy"),
        "The SE-CNN row: the shipped SE-CNN on the same distorted digits, each 40x40 canvas resized "
        "to its 28x28 input as the server would; it never saw distortions this large in training. "
        + LATENCY_NOTE,
        _per_digit(held),
        f"Confusion matrix (rows true, columns predicted) is in `{m['model']}.metrics.json`.",
        "## Limits",
        "- Synthetic distortions of 4,000 MNIST digits; real photographs need MNIST-style "
        "preparation first (white digit on black).\n"
        "- The margin over the twin is small with 4,000 training digits (see the table: a few "
        "images of 1,000, near the noise of this test set); the transformer's crop is what a "
        "client can inspect (`theta`, `rectified_image`), the accuracy gain is modest.\n"
        "- The transformer learns one affine crop per image: no perspective or elastic distortion.\n"
        "- The held-out set is 1,000 images: one error moves accuracy by 0.1 point.",
    ]


def sasa_card(m: dict[str, Any]) -> list[str]:
    held, ref = m["held_out"], m["se_cnn"]
    return [
        "# sasa_classifier — handwritten digit classifier (stand-alone self-attention)",
        "Stand-Alone Self-Attention (Ramachandran et al., NeurIPS 2019, arXiv:1906.05909): after a "
        "3x3 convolutional stem (32 channels, 28x28, then 2x2 max pool), every spatial layer is local "
        "multi-head self-attention over a 5x5 window with relative position embeddings (row and "
        "column offset halves, added as q^T r): one block of 32 channels / 4 heads at 14x14, a 1x1 "
        "widening and 2x2 max pool, two blocks of 64 channels / 8 heads at 7x7; global average pool "
        "and a linear head. Served outputs: `probabilities`, `logits` and `window_attention` "
        "[4, 14, 14, 5, 5] (every query's window weights in the 14x14 block), exported with a "
        "dynamic batch.",
        "## Data",
        DIGITS_DATA.format(side=28, **m["data"]),
        "## Training",
        _recipe(m, "random affine augmentation (rotation ±12°, shift ±2.5 px, scale 0.9–1.1, shear) "
                "— the SE-CNN's recipe"),
        "## Held-out results",
        f"Accuracy on the 1,000 held-out images: **{held['accuracy']:.2%}** ({held['errors']} errors); "
        f"training accuracy {m['train_accuracy']:.2%}. The SE-CNN on the same images in the same "
        f"run: {ref['accuracy']:.2%}, with {ref['parameters'] / m['parameters']:.1f}x the parameters.",
        comparison(m),
        LATENCY_NOTE,
        _per_digit(held),
        f"Confusion matrix (rows true, columns predicted) is in `{m['model']}.metrics.json`.",
        "## Limits",
        "- Trained on 4,000 MNIST digits only; prepare other images the MNIST way first.\n"
        "- The window is 5x5 (the paper's is 7x7) so that training fits 20 minutes on this "
        "machine; local attention computes k*k products per position, so on a CPU it is slower "
        "than the SE-CNN's convolutions despite far fewer parameters (see the latency columns).\n"
        "- The held-out set is 1,000 images: one error moves accuracy by 0.1 point.",
    ]


def headline(m: dict[str, Any]) -> str:
    held = m["held_out"]
    line = f"held-out accuracy {held['accuracy']:.2%} ({held['errors']} errors in 1,000)"
    for twin in m.get("twins", []):
        line += f"; {twin['name']} {twin['accuracy']:.2%}"
    return line + f"; SE-CNN {m['se_cnn']['accuracy']:.2%}"


CARDS = {"cbam_classifier": cbam_card, "stn_classifier": stn_card, "sasa_classifier": sasa_card}
