"""Requests -> one batch of inputs, and the batch's outputs -> one result per request.

Inputs are concatenated along the batch axis; inputs named in the policy's ``pad_values`` are
first padded to the longest request in the batch, each input on its own (a query and a source
sequence pad to their own longest). Outputs are checked to have one row per input row, sliced
back into each request's rows, and outputs named in ``variable_output_axes`` are cut back to the
request's own length (per axis, to the input ``output_lengths`` names) so padding never leaks
into a response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from service.batching.policy import BatchingPolicy
from service.batching.request import Outputs, Pending
from service.errors import InternalError


def gather_inputs(items: Sequence[Pending], policy: BatchingPolicy) -> dict[str, np.ndarray]:
    """The execution's inputs. A lone request's tensors go through unchanged (no copy)."""
    if len(items) == 1:
        return dict(items[0].inputs)
    batch: dict[str, np.ndarray] = {}
    for name in items[0].inputs:
        arrays = [item.inputs[name] for item in items]
        ragged = any(array.shape[1:] != arrays[0].shape[1:] for array in arrays)
        if ragged and name in policy.pad_values:
            batch[name] = _pad_and_stack(arrays, policy.pad_values[name])
        else:
            # Same group => same non-batch shape and dtype, so this cannot fail on shape.
            batch[name] = np.concatenate(arrays, axis=0)
    return batch


def _pad_and_stack(arrays: Sequence[np.ndarray], value: float) -> np.ndarray:
    rows = sum(array.shape[0] for array in arrays)
    # Non-padded axes are equal within a group, so the max only grows the padded ones.
    dims = tuple(max(sizes) for sizes in zip(*(array.shape[1:] for array in arrays)))
    batch = np.full((rows, *dims), value, dtype=arrays[0].dtype)
    start = 0
    for array in arrays:
        rows_of_it = slice(start, start + array.shape[0])
        region = (rows_of_it, *(slice(0, size) for size in array.shape[1:]))
        batch[region] = array
        start += array.shape[0]
    return batch


def split_outputs(
    outputs: Mapping[str, np.ndarray], items: Sequence[Pending], policy: BatchingPolicy, model: str
) -> list[Outputs]:
    """One result per request, in ``items`` order; InternalError if the rows do not add up."""
    if not policy.batched:
        # No batch dim: the lone request gets the outputs as they are.
        return [{name: np.asarray(value) for name, value in outputs.items()}]
    rows = sum(item.rows for item in items)
    arrays: dict[str, np.ndarray] = {}
    for name, value in outputs.items():
        array = np.asarray(value)
        got = array.shape[0] if array.ndim else None
        if got != rows:
            found = "no batch dimension" if got is None else f"{got} rows"
            raise InternalError(
                f"model '{model}' output '{name}' has {found}, expected {rows} "
                f"(one per input row of a batch of {len(items)} requests)"
            )
        arrays[name] = array

    results: list[Outputs] = []
    start = 0
    for item in items:
        stop = start + item.rows
        result: Outputs = {}
        for name, array in arrays.items():
            part = array[start:stop]  # a view: rows of a C-ordered array stay contiguous
            axes = policy.variable_output_axes.get(name)
            if axes and item.length is not None:
                # Each axis to the length of the input it follows (a cross-attention map: query
                # rows by source keys), else to the request's one length.
                follows = policy.output_lengths.get(name, {})
                sizes = {a: item.lengths.get(follows[a], item.length) if a in follows else item.length for a in axes}
                part = _cut_back(part, sizes, name, model)
            result[name] = part
        results.append(result)
        start = stop
    return results


def _cut_back(part: np.ndarray, sizes: Mapping[int, int], name: str, model: str) -> np.ndarray:
    """``part`` with each axis in ``sizes`` cut to that size (axis -> the request's length)."""
    if max(sizes) >= part.ndim:
        raise InternalError(
            f"model '{model}' output '{name}' has {part.ndim} dims, "
            f"cannot cut back axes {sorted(sizes)}"
        )
    if all(part.shape[axis] <= size for axis, size in sizes.items()):
        return part  # this request set the padded length; nothing to remove
    index = [slice(None)] * part.ndim
    for axis, size in sizes.items():
        index[axis] = slice(0, size)
    # Copy so the response owns compact memory rather than a strided view of the whole batch.
    return np.ascontiguousarray(part[tuple(index)])
