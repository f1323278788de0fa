"""One table for tensor data types: Triton config enum <-> v2 wire name <-> numpy dtype.

The config (``TYPE_FP32``), the wire protocol (``"FP32"``) and ONNX Runtime (``float32``) each
spell types their own way; every translation goes through this table.
"""

from __future__ import annotations

import numpy as np

# v2 datatype name -> numpy dtype. BYTES (variable-length strings) is not served by any model
# here; it is refused with a clear message rather than half-supported.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_V2: dict[np.dtype, str] = {dt: name for name, dt in V2_TO_NUMPY.items()}

# Which InferTensorContents field carries each type when sent typed instead of raw.
V2_TO_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP16": "fp32_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def config_type_to_v2(type_name: str) -> str:
    """``TYPE_FP32`` (model_config.proto enum name) -> ``FP32``; ``TYPE_STRING`` -> ``BYTES``."""
    name = type_name.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def v2_to_config_type(v2: str) -> str:
    return "TYPE_STRING" if v2 == "BYTES" else "TYPE_" + v2
