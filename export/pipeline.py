"""Export one model into a model repository: weights -> ONNX -> checks -> parity -> files.

The ONNX file is written to a scratch folder and only copied into the repository after the
checker and the parity check pass, so a failed export never replaces a served model.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from export import onnx_export
from export.errors import ParityError
from export.onnx_export import ParityRow
from export.repository_writer import write_model
from export.specs import ModelSpec
from export.weights import load_checkpoint, seeded_model

STEPS = ("export", "check", "parity", "write")


@dataclass(frozen=True)
class ExportResult:
    """What one export produced: the model folder, the parity rows, the time it took."""

    name: str
    model_dir: Path
    rows: list[ParityRow]
    seconds: float


def parity_batches(max_batch_size: int) -> list[int]:
    """1, a middle (odd where possible, so nothing lines up by luck) and the max batch."""
    return sorted({1, max(1, max_batch_size // 2 + 1), max_batch_size})


def run_parity(
    spec: ModelSpec, config: Any, reference: torch.nn.Module, onnx_path: Path, max_batch_size: int
) -> list[ParityRow]:
    """Every parity case: each batch size, times each sequence length for the encoder."""
    session = onnx_export.open_session(onnx_path)
    output_names = [t.name for t in spec.outputs(config)]
    generator = torch.Generator().manual_seed(spec.seed + 1)
    rows: list[ParityRow] = []
    for batch in parity_batches(max_batch_size):
        for sequence in spec.parity_sequences(config):
            sample = spec.sample(config, batch, generator, sequence)
            rows += onnx_export.compare(reference, session, sample, output_names, sequence)
    return rows


def load_weights(spec: ModelSpec, config: Any, checkpoint: Path | None = None) -> torch.nn.Module:
    """The eval-mode model: seeded random weights, or ``checkpoint`` (checked key by key)."""
    if checkpoint is None:
        return seeded_model(spec, config)
    torch.manual_seed(spec.seed)
    model = spec.build(config)
    load_checkpoint(model, checkpoint)
    return model.eval()


def export_model(
    spec: ModelSpec,
    config: Any,
    model: torch.nn.Module,
    repository: Path,
    max_batch_size: int | None = None,
    on_step: Callable[[str], None] = lambda step: None,
    *,
    version: int = 1,
    keep_config: bool = False,
    instance_kind: str = "KIND_CPU",
) -> ExportResult:
    """Export ``model`` (built by ``load_weights``) into ``repository`` as ``version``;
    ``keep_config`` leaves an existing config.pbtxt and side files untouched (see write_model);
    ``instance_kind`` is config.pbtxt's instance_group kind (KIND_CPU, or KIND_GPU for a
    repository built for a CUDA server).

    Raises ParityError (with the table) when ONNX Runtime disagrees with PyTorch.
    """
    start = time.perf_counter()
    max_batch_size = max_batch_size or spec.default_max_batch_size
    model.eval()
    input_names = [t.name for t in spec.inputs(config)]
    output_names = [t.name for t in spec.outputs(config)]
    if list(model.output_names) != output_names:
        raise AssertionError(f"model outputs {model.output_names} != served {output_names}")
    with tempfile.TemporaryDirectory(prefix=f"attnserve-{spec.name}-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        on_step("export")
        generator = torch.Generator().manual_seed(spec.seed)
        example = spec.sample(config, 2, generator, spec.export_sequence(config))
        axes = spec.dynamic_axes(config)
        prepared = onnx_export.prepare_for_inference(model)
        onnx_export.export_onnx(prepared, example, output_names, axes, onnx_path)
        on_step("check")
        symbolic = {name: list(dims) for name, dims in axes.items()}
        onnx_export.check_onnx(onnx_path, input_names, output_names, symbolic)
        on_step("parity")
        rows = run_parity(spec, config, model, onnx_path, max_batch_size)
        if not all(row.ok for row in rows):
            raise ParityError(onnx_export.format_parity_table(spec.name, rows))
        on_step("write")
        model_dir = write_model(
            repository,
            replace(spec.config_spec(config, max_batch_size), instance_kind=instance_kind),
            onnx_path,
            spec.side_files(config),
            version=version,
            keep_config=keep_config,
        )
    return ExportResult(spec.name, model_dir, rows, time.perf_counter() - start)
