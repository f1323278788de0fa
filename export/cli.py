"""``python -m export`` / ``attnserve export``: export models into a model repository.

Weights: ``--checkpoint NAME=PATH`` where given; otherwise the trained weights shipped in
``export/weights/<model>.safetensors`` (default variant only); otherwise, or for every model
with ``--random-weights``, seeded random weights. The summary line says which each model got.

Usage errors (unknown model, bad config override, unusable checkpoint) print one line and
return 2; a failed parity check prints the table and returns 1; success returns 0. No
traceback reaches the user for anything they can fix from the command line. torch is
imported only once the arguments are valid, so ``--help`` and usage errors are instant.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from export.defaults import MODEL_NAMES
from export.errors import CheckpointError, ConfigError, ExportFailure, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# --instance-kind -> config.pbtxt's instance_group kind (Triton's names).
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnserve export",
        description="Export attention models to ONNX (with a parity check against PyTorch) "
        "into a Triton-layout model repository.",
    )
    parser.add_argument("--model-repository", required=True, type=Path, metavar="DIR")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help=f"model to export (repeatable; default: all of {', '.join(MODEL_NAMES)})",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="state_dict (.pt or .safetensors) for a model; default: the shipped trained "
        "weights (export/weights/, default variant), else seeded random weights",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="seeded random weights for every model without a --checkpoint, even where "
        "trained weights are shipped",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="JSON object overriding fields of a model's config dataclass",
    )
    parser.add_argument("--variant", choices=("default", "benchmark"), default="default")
    parser.add_argument(
        "--version",
        type=int,
        metavar="N",
        help="write the model as version N (<model>/N/model.onnx) beside the versions already "
        "there; an existing config.pbtxt and side files are kept as they are (default: version 1, "
        "config rewritten)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        metavar="N",
        help="max_batch_size for every exported model (default: per model, 64 or 32)",
    )
    parser.add_argument(
        "--instance-kind",
        choices=tuple(INSTANCE_KINDS),
        default="cpu",
        help="instance_group kind written to every config.pbtxt: cpu (KIND_CPU) or gpu "
        "(KIND_GPU, for a repository served on CUDA, as the GPU image's is); default cpu",
    )
    return parser


def _pairs(values: Sequence[str], flag: str, models: Sequence[str]) -> dict[str, Path]:
    """NAME=PATH arguments, each naming a model being exported, at most once."""
    pairs: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{flag} expects NAME=PATH, got {value!r}")
        if name not in MODEL_NAMES:
            raise UsageError(
                f"{flag}: unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}"
            )
        if name not in models:
            raise UsageError(f"{flag}: model {name!r} is not being exported")
        if name in pairs:
            raise UsageError(f"{flag} given twice for {name!r}")
        pairs[name] = Path(path)
    return pairs


class Planned(NamedTuple):
    """One model to export and where its weights come from."""

    name: str
    config: Any
    checkpoint: Path | None  # None: seeded random weights
    source: str  # "checkpoint", "shipped" or "random"


def _resolve(args: argparse.Namespace) -> list[Planned]:
    """The models to export with their configs and weights, validated up front."""
    unknown = [name for name in args.model if name not in MODEL_NAMES]
    if unknown:
        raise UsageError(
            f"unknown model(s) {', '.join(unknown)}; known models: {', '.join(MODEL_NAMES)}"
        )
    models = list(dict.fromkeys(args.model)) or list(MODEL_NAMES)
    if args.max_batch_size is not None and args.max_batch_size < 1:
        raise UsageError("--max-batch-size must be >= 1")
    if args.version is not None and args.version < 1:
        raise UsageError("--version must be >= 1")
    checkpoints = _pairs(args.checkpoint, "--checkpoint", models)
    config_files = _pairs(args.config, "--config", models)
    for name, path in checkpoints.items():
        if not path.is_file():
            raise UsageError(f"--checkpoint for {name}: {path} does not exist")

    from export.config_overrides import apply_overrides, load_overrides  # imports torch
    from export.specs import SPECS
    from export.weights import shipped_weights

    plan = []
    for name in models:
        config = SPECS[name].variants[args.variant]
        if name in config_files:
            try:
                config = apply_overrides(config, load_overrides(config_files[name]))
            except ConfigError as exc:
                raise UsageError(f"--config for {name}: {exc}") from None
        if name in checkpoints:
            plan.append(Planned(name, config, checkpoints[name], "checkpoint"))
            continue
        # Shipped weights fit the default shapes only; the benchmark variant is for timing.
        shipped = shipped_weights(name) if args.variant == "default" else None
        if shipped is not None and not args.random_weights:
            plan.append(Planned(name, config, shipped, "shipped"))
        else:
            plan.append(Planned(name, config, None, "random"))
    return plan


def _load(planned: Planned) -> Any:
    """The eval-mode model; shipped weights that do not fit a --config get a usable hint."""
    from export.pipeline import load_weights
    from export.specs import SPECS

    try:
        return load_weights(SPECS[planned.name], planned.config, planned.checkpoint)
    except CheckpointError as exc:
        if planned.source != "shipped":
            raise
        raise UsageError(
            f"{exc}; the shipped weights fit the default config only: pass "
            f"--checkpoint {planned.name}=PATH or --random-weights"
        ) from None


def _weights_note(planned: Planned) -> str:
    if planned.source == "random":
        return "seeded random weights"
    return f"{planned.source} weights {planned.checkpoint}"


def _export_all(args: argparse.Namespace, plan: list[Planned]) -> int:
    """Load every model's weights first (a bad checkpoint stops before anything is written),
    then export them one by one; returns how many were exported."""
    from tqdm import tqdm

    from export.onnx_export import format_parity_table
    from export.pipeline import STEPS, export_model
    from export.specs import SPECS

    total = len(plan) * (len(STEPS) + 1)
    with tqdm(total=total, desc="export", unit="step", file=sys.stderr) as bar:
        models = []
        for planned in plan:
            bar.set_description(f"{planned.name}: weights")
            models.append(_load(planned))
            bar.update(1)
        args.model_repository.mkdir(parents=True, exist_ok=True)
        summary = []
        for planned, model in zip(plan, models):
            name, config = planned.name, planned.config

            def step(label: str, name: str = name) -> None:
                bar.set_description(f"{name}: {label}")
                if label != STEPS[0]:
                    bar.update(1)  # the previous step finished

            result = export_model(
                SPECS[name], config, model, args.model_repository, args.max_batch_size, step,
                version=args.version or 1, keep_config=args.version is not None,
                instance_kind=INSTANCE_KINDS[args.instance_kind],
            )
            bar.update(1)
            tqdm.write(format_parity_table(name, result.rows), file=sys.stdout)
            summary.append(
                f"{name}: {result.model_dir} ({result.seconds:.1f} s, {_weights_note(planned)})"
            )
    for line in summary:
        print(line)
    return len(summary)


def main(argv: list[str] | None = None) -> int:
    """Run the export CLI; returns the process exit status (0 ok, 1 failed, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the message
        return int(exc.code or 0)
    start = time.perf_counter()
    try:
        count = _export_all(args, _resolve(args))
    except UsageError as exc:  # includes ConfigError and CheckpointError
        print(f"attnserve export: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ExportFailure as exc:  # parity (message holds the table) or graph checks
        print(f"attnserve export: export failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    elapsed = time.perf_counter() - start
    print(f"exported {count} model(s) to {args.model_repository} in {elapsed:.1f} s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
