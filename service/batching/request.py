"""One queued request: its tensors, how it may be grouped, and the future its caller awaits.

``describe`` works out, once at submit time, everything the scheduler needs to place a request
in a batch (rows, shape group, padded length) and rejects what can never be batched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

from service.batching.policy import BatchingPolicy
from service.errors import InvalidInput

Outputs = dict[str, np.ndarray]


@dataclass(eq=False)  # identity semantics: two requests with equal tensors are still two requests
class Pending:
    inputs: Mapping[str, np.ndarray]
    rows: int  # first-dim size; 1 for a model without a batch dim
    group: Hashable  # requests share a batch only when their groups are equal
    length: int | None  # the size padded inputs are cut back to; None when nothing is padded
    level: int  # queue index: 0 is the highest priority
    deadline: float | None  # absolute, on the batcher's clock
    enqueued_at: float
    future: asyncio.Future[Outputs]
    # True when it arrived plainly alone: nothing else queued or executing, and the previous
    # execution held one request (DynamicBatcher._idle_for_one; policy dispatch_when_idle).
    arrived_idle: bool = False
    queued: bool = True  # False once taken into a batch, expired, cancelled or aborted
    # Padded input -> this request's size along its variable axes (what its outputs are cut
    # back to when the policy's output_lengths ties an output axis to that input).
    lengths: Mapping[str, int] = field(default_factory=dict)

    # The caller may have gone away (cancelled future) or the request may already have been
    # answered (a deadline racing a shutdown): setting a done future raises InvalidStateError,
    # which would break every batch-mate, so both helpers check first.
    def resolve(self, outputs: Outputs) -> None:
        if not self.future.done():
            self.future.set_result(outputs)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(frozen=True)
class Placement:
    """Where a request may go: rows, shape group, the length padding is measured by (the
    longest padded input) and each padded input's own length."""

    rows: int
    group: Hashable
    length: int | None
    lengths: Mapping[str, int]


def describe(inputs: Mapping[str, np.ndarray], policy: BatchingPolicy) -> Placement:
    """Return the request's placement, or raise InvalidInput."""
    if not inputs:
        raise InvalidInput("request has no inputs")
    for name, array in inputs.items():
        if not isinstance(array, np.ndarray):
            raise InvalidInput(f"input '{name}' is not an array")
    if not policy.batched:
        return Placement(1, None, None, {})
    rows = _rows(inputs, policy.max_batch_size)
    group: list[tuple[str, str, tuple[int | None, ...]]] = []
    lengths: dict[str, int] = {}
    for name in sorted(inputs):
        array = inputs[name]
        if name in policy.pad_values:
            axes = policy.pad_axes.get(name, tuple(range(1, array.ndim)))
            if any(axis >= array.ndim for axis in axes):
                raise InvalidInput(
                    f"input '{name}' has shape {list(array.shape)}, "
                    f"too few dims to pad axes {list(axes)}"
                )
            # Padded axes drop out of the group: any size there can share a batch.
            dims = tuple(
                None if axis in axes else size for axis, size in enumerate(array.shape) if axis > 0
            )
            if axes:
                lengths[name] = max(array.shape[axis] for axis in axes)
        else:
            dims = tuple(array.shape[1:])
        group.append((name, array.dtype.str, dims))
    # Inputs padded independently (a query and a source) may differ; otherwise a mismatch
    # is a malformed request (ids and mask of different lengths).
    if len(set(lengths.values())) > 1 and not policy.output_lengths:
        found = ", ".join(f"'{name}' {size}" for name, size in sorted(lengths.items()))
        raise InvalidInput(f"padded inputs must have the same length, got {found}")
    length = max(lengths.values(), default=None)
    return Placement(rows, tuple(group), length, lengths)


def _rows(inputs: Mapping[str, np.ndarray], max_batch_size: int) -> int:
    for name, array in inputs.items():
        if array.ndim == 0:
            raise InvalidInput(f"input '{name}' has no batch dimension")
    counts = {name: array.shape[0] for name, array in inputs.items()}
    if len(set(counts.values())) > 1:
        found = ", ".join(f"'{name}' {count}" for name, count in sorted(counts.items()))
        raise InvalidInput(f"inputs disagree on the batch size: {found}")
    rows = next(iter(counts.values()))
    if rows == 0:
        raise InvalidInput("request has a batch size of 0")
    if rows > max_batch_size:
        raise InvalidInput(f"batch size {rows} exceeds the model's max_batch_size {max_batch_size}")
    return rows
