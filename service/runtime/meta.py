"""What the ONNX graph itself says about its inputs and outputs, read from a live session.

The repository compares these with config.pbtxt at load time, so a config that names a tensor
the graph lacks, or gives it another dtype or a conflicting fixed dim, fails the load instead
of failing the first request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from service.errors import ModelLoadError

# A dim as onnxruntime reports it: an int when fixed, the symbol's name ("batch") when symbolic,
# None when the graph leaves it unnamed.
Dim = Union[int, str, None]

# onnxruntime's type strings -> numpy. bfloat16 and the float8 types have no numpy dtype, so a
# model using them at its boundary is refused at load.
_ONNX_TO_NUMPY: dict[str, np.dtype] = {
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(string)": np.dtype(np.object_),
}


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]
    onnx_type: str  # as onnxruntime spells it, e.g. "tensor(float)"

    @property
    def rank(self) -> int:
        return len(self.shape)


def read_meta(node_args: Sequence[Any], kind: str) -> tuple[TensorMeta, ...]:
    """``session.get_inputs()`` / ``get_outputs()`` -> TensorMeta, in graph order.

    ``kind`` ("input"/"output") only words the error for a tensor of an unsupported type.
    """
    metas = []
    for arg in node_args:
        dtype = _ONNX_TO_NUMPY.get(arg.type)
        if dtype is None:
            raise ModelLoadError(
                f"ONNX {kind} {arg.name!r} has type {arg.type}, which the server cannot carry "
                f"(supported: {', '.join(sorted(_ONNX_TO_NUMPY))})"
            )
        shape = tuple(d if isinstance(d, (int, str)) else None for d in arg.shape)
        metas.append(TensorMeta(arg.name, dtype, shape, arg.type))
    return tuple(metas)
