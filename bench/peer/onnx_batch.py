"""How every peer runs the graph: one ONNX Runtime session built with attnserve's session
options, a list of requests in, one result per request out.

Imported inside the peers' own virtual environments (MLServer, Triton's Python backend,
KServe), which have numpy and onnxruntime but none of attnserve's other dependencies; so it
imports only those and ``service.runtime.session`` (itself onnxruntime only). The batching
arithmetic is attnserve's (service/batching/assembly.py): inputs concatenated along the batch
axis, variable-length inputs padded to the longest request with the model's pad values, and
variable output axes cut back to each request's own length, so a peer's answers are the ones
attnserve gives and the scenario's answer check holds for them too.

What a peer does *around* this (receiving, queueing, batching, answering) is what is compared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from service.runtime.session import default_intra_op_threads, session_options

Feeds = Mapping[str, np.ndarray]


class OnnxBatchRunner:
    """``run(requests)`` for a list of one-or-more-row requests; thread-compatible, not safe."""

    def __init__(
        self, onnx_path: str, intra_op_threads: int = 0, pad_values: Mapping[str, float] | None = None,
        variable_output_axes: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        threads = intra_op_threads or default_intra_op_threads(1)
        self.session = ort.InferenceSession(
            onnx_path, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.pad_values = dict(pad_values or {})
        self.variable_output_axes = {k: tuple(v) for k, v in (variable_output_axes or {}).items()}

    @classmethod
    def from_json(cls, onnx_path: str, text: str) -> "OnnxBatchRunner":
        """Built from the JSON the harness writes into a peer's settings (see ``settings_json``)."""
        settings = json.loads(text or "{}")
        return cls(onnx_path, int(settings.get("intra_op_threads", 0)), settings.get("pad_values"),
                   settings.get("variable_output_axes"))

    def run(self, requests: Sequence[Feeds]) -> list[dict[str, np.ndarray]]:
        if len(requests) == 1:
            outputs = self.session.run(self.output_names, dict(requests[0]))
            return [dict(zip(self.output_names, outputs))]
        names = list(requests[0])
        batch = {name: self._stack([r[name] for r in requests], name) for name in names}
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, batch)))
        results, start = [], 0
        length_of = next((n for n in names if n in self.pad_values), None)
        for request in requests:
            rows = next(iter(request.values())).shape[0]
            length = request[length_of].shape[-1] if length_of else None
            result = {}
            for name, array in outputs.items():
                part = array[start:start + rows]
                axes = self.variable_output_axes.get(name)
                if axes and length is not None:
                    index = [slice(None)] * part.ndim
                    for axis in axes:
                        index[axis] = slice(0, length)
                    part = part[tuple(index)]
                result[name] = np.ascontiguousarray(part)
            results.append(result)
            start += rows
        return results

    def _stack(self, arrays: list[np.ndarray], name: str) -> np.ndarray:
        if name not in self.pad_values or all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
            return np.concatenate(arrays, axis=0)
        dims = tuple(max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays)))
        batch = np.full((sum(a.shape[0] for a in arrays), *dims), self.pad_values[name], dtype=arrays[0].dtype)
        start = 0
        for array in arrays:
            batch[(slice(start, start + array.shape[0]), *(slice(0, s) for s in array.shape[1:]))] = array
            start += array.shape[0]
        return batch


def settings_json(intra_op_threads: int, pad_values: Mapping[str, float],
                  variable_output_axes: Mapping[str, Sequence[int]]) -> str:
    """What ``from_json`` reads: the harness writes it into each peer's model settings."""
    return json.dumps({"intra_op_threads": intra_op_threads, "pad_values": dict(pad_values),
                       "variable_output_axes": {k: list(v) for k, v in variable_output_axes.items()}})
