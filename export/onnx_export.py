"""eval -> prepare -> torch.onnx.export -> onnx.checker -> parity, as small functions.

The exporter is torch's dynamo exporter (``torch.export`` + onnxscript) at opset 18: it keeps
named symbolic dims (the legacy TorchScript exporter silently fixes the encoder's sequence
length), and opset 18 avoids the opset-23 ``Attention`` op, which ONNX Runtime 1.31 rejects
with a (B, T) key mask.

Before export a fresh copy of the model is prepared for inference: spectral-norm
parametrisations are removed with the normalised weight baked in (in eval mode, so no power
iteration runs), and batch norms are folded by each model's ``fuse_for_inference``. Parity
then compares ONNX Runtime on CPU against the *unprepared* eval model, so a mistake in baking
or folding fails the export too.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.export import Dim
from torch.nn.utils import parametrize

from export.errors import ExportCheckError, ParityError

OPSET = 18
RTOL = 1e-4
ATOL = 1e-5


@dataclass(frozen=True)
class ParityRow:
    """One output at one input shape: the largest absolute error and whether it passed."""

    batch: int
    sequence: int | None
    output: str
    max_abs_error: float
    ok: bool


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """A fresh eval copy with spectral norm baked in and batch norm folded.

    The copy is rebuilt from ``model.config`` and loaded from its state dict rather than
    deep-copied: parametrised modules share a generated class, so removing the
    parametrisation from a deep copy would also strip it from the original.
    """
    model.eval()
    prepared = type(model)(model.config)
    prepared.load_state_dict(model.state_dict())
    prepared.eval()
    for module in prepared.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    for module in list(prepared.modules()):
        fuse = getattr(module, "fuse_for_inference", None)
        if callable(fuse):
            fuse()
    prepared.requires_grad_(False)
    return prepared


def export_onnx(
    model: nn.Module,
    sample: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, Dim]],
    path: Path,
) -> None:
    """Export ``model`` (already prepared) to one self-contained ONNX file at ``path``.

    ``sample`` must use sizes >= 2 on every dynamic axis: torch.export specialises 0 and 1.
    """
    names = list(sample)
    dynamic_shapes = {name: dict(dynamic_axes.get(name, {})) for name in names}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter deprecation chatter, not about our model
        torch.onnx.export(
            model,
            tuple(sample.values()),
            str(path),
            input_names=names,
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            external_data=False,
            dynamo=True,
            verbose=False,
        )


def check_onnx(
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    symbolic_axes: Mapping[str, Sequence[int]],
) -> onnx.ModelProto:
    """Run ``onnx.checker`` and check names, symbolic dims and self-containedness."""
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    got_inputs = [i.name for i in model.graph.input]
    got_outputs = [o.name for o in model.graph.output]
    if got_inputs != list(input_names) or got_outputs != list(output_names):
        raise ExportCheckError(
            f"graph tensors {got_inputs} -> {got_outputs}, expected {list(input_names)} -> "
            f"{list(output_names)}"
        )
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis in symbolic_axes.get(value.name, ()):
            if not dims[axis].dim_param:
                raise ExportCheckError(
                    f"input {value.name} axis {axis} is not symbolic: {dims[axis]}"
                )
    external = [
        t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise ExportCheckError(f"weights stored outside the file: {external[:3]}")
    leftover = {n.op_type for n in model.graph.node} & {"BatchNormalization", "Dropout"}
    if leftover:
        raise ExportCheckError(f"training-time ops left in the graph: {sorted(leftover)}")
    return model


def compare(
    reference: nn.Module,
    session: ort.InferenceSession,
    sample: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    sequence: int | None = None,
) -> list[ParityRow]:
    """One parity case: every output's largest absolute error, judged by rtol/atol."""
    with torch.no_grad():
        expected = [t.numpy() for t in reference(*sample.values())]
    actual = session.run(list(output_names), {k: v.numpy() for k, v in sample.items()})
    batch = next(iter(sample.values())).shape[0]
    rows = []
    for name, want, got in zip(output_names, expected, actual):
        if want.shape != got.shape:
            raise ParityError(f"{name}: ONNX shape {got.shape} != PyTorch shape {want.shape}")
        error = float(np.max(np.abs(got - want))) if want.size else 0.0
        ok = bool(np.all(np.isfinite(got))) and np.allclose(got, want, rtol=RTOL, atol=ATOL)
        rows.append(ParityRow(batch, sequence, name, error, ok))
    return rows


def format_parity_table(model_name: str, rows: Sequence[ParityRow]) -> str:
    """A fixed-width table: one line per (batch, sequence, output)."""
    header = f"{'model':<22}{'batch':>6}{'seq':>6}  {'output':<18}{'max_abs_err':>12}  result"
    lines = [header, "-" * len(header)]
    for r in rows:
        seq = "-" if r.sequence is None else str(r.sequence)
        verdict = "ok" if r.ok else f"FAIL (rtol {RTOL:g}, atol {ATOL:g})"
        cells = f"{model_name:<22}{r.batch:>6}{seq:>6}  {r.output:<18}"
        lines.append(f"{cells}{r.max_abs_error:>12.3e}  {verdict}")
    return "\n".join(lines)


def open_session(path: Path) -> ort.InferenceSession:
    """A CPU session with default graph optimisations, as the server would use."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
