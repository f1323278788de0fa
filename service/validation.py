"""Load-time checks of a model's config against its ONNX graph, and warm-up inputs.

Catching a config/graph mismatch at load (a renamed output, a wrong dtype, a fixed dim the
config calls variable) turns what would be a confusing run-time fault into a model that is
reported not ready with a reason naming the tensor.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from service.dtypes import V2_TO_NUMPY
from service.errors import ModelLoadError
from service.model_config import ModelSpec, TensorSpec, WarmupSample


def check_against_graph(spec: ModelSpec, runner: Any) -> None:
    """Every configured tensor must exist in the graph with the same dtype and a compatible shape."""
    _check(spec, "input", spec.inputs, runner.input_meta, require_all_graph=True)
    _check(spec, "output", spec.outputs, runner.output_meta, require_all_graph=False)


def _check(
    spec: ModelSpec, kind: str, configured: Iterable[TensorSpec], graph: Iterable[Any], require_all_graph: bool
) -> None:
    by_name = {m.name: m for m in graph}
    for tensor in configured:
        meta = by_name.get(tensor.name)
        if meta is None:
            raise ModelLoadError(
                f"model {spec.name!r}: config {kind} {tensor.name!r} is not in the ONNX graph "
                f"(graph {kind}s: {sorted(by_name)})"
            )
        if np.dtype(meta.dtype) != tensor.dtype:
            raise ModelLoadError(
                f"model {spec.name!r}: {kind} {tensor.name!r} is {tensor.datatype} in config "
                f"but {np.dtype(meta.dtype).name} in the ONNX graph"
            )
        expected = ((-1,) if spec.max_batch_size > 0 else ()) + tensor.dims
        shape = tuple(meta.shape)
        if len(shape) != len(expected):
            raise ModelLoadError(
                f"model {spec.name!r}: {kind} {tensor.name!r} has rank {len(shape)} in the graph, "
                f"config implies {len(expected)} (dims {list(tensor.dims)}"
                f"{' plus the batch dim' if spec.max_batch_size > 0 else ''})"
            )
        for axis, (want, have) in enumerate(zip(expected, shape)):
            fixed = isinstance(have, int) and have > 0
            if want != -1 and fixed and want != have:
                raise ModelLoadError(
                    f"model {spec.name!r}: {kind} {tensor.name!r} dim {axis} is {have} in the graph, {want} in config"
                )
            if want == -1 and fixed and not (axis == 0 and spec.max_batch_size == 0):
                raise ModelLoadError(
                    f"model {spec.name!r}: {kind} {tensor.name!r} dim {axis} is variable in config "
                    f"but fixed at {have} in the graph"
                )
    if require_all_graph:
        missing = sorted(set(by_name) - {t.name for t in configured})
        if missing:
            raise ModelLoadError(f"model {spec.name!r}: graph inputs {missing} are missing from config")


def warmup_inputs(sample: WarmupSample, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for one ``model_warmup`` entry. Random integers are 0/1 so that ids, labels
    and masks all stay in range for any model (Triton leaves the range to the model author)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, (datatype, dims, kind) in sample.inputs.items():
        dtype = V2_TO_NUMPY[datatype]
        shape = (sample.batch_size, *dims)
        if kind == "zero":
            out[name] = np.zeros(shape, dtype)
        elif dtype.kind == "f":
            out[name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[name] = rng.integers(0, 2, size=shape).astype(dtype)
    return out
