"""How one model's requests are queued and grouped into executions.

``BatchingPolicy`` is built once per loaded model from its ``config.pbtxt`` (``max_batch_size``,
``dynamic_batching``, ``instance_group``, the ``attnserve.pad_inputs`` parameter) and is checked
here, so a bad config fails at load time rather than on the first request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BatchingPolicy:
    """Triton's dynamic batching settings, in seconds and rows.

    ``max_batch_size`` 0 means the model has no batch dimension: every request runs alone and
    its tensors go to the model unchanged. ``dynamic`` False (no ``dynamic_batching`` block)
    also runs every request alone, but the queue, deadline and bound rules still apply.
    """

    max_batch_size: int
    dynamic: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    # Measured from the oldest queued request, as Triton does.
    max_queue_delay_s: float = 0.0
    # Queued requests (not rows); 0 = unbounded.
    max_queue_size: int = 0
    # Queue timeout (Triton default_queue_policy.default_timeout_microseconds); None or 0 = none.
    default_timeout_s: float | None = None
    allow_timeout_override: bool = True
    # 0 = no priorities; otherwise levels 1..N with 1 the highest.
    priority_levels: int = 0
    default_priority: int = 0
    # Inputs that may be padded (with this value) so requests of different lengths share a batch.
    pad_values: Mapping[str, float] = field(default_factory=dict)
    # Which axes of a padded input vary (batch axis = 0). An input in pad_values but not here
    # pads every non-batch axis. The config's -1 dims are what belongs here.
    pad_axes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # Output name -> axes (batch axis = 0) cut back to each request's own length.
    variable_output_axes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # Output name -> {axis: padded input}: that axis is cut back to the request's length of
    # that input, for models whose padded inputs vary independently (a query and a source
    # sequence; config parameter attnserve.output_lengths). With it, padded inputs of one
    # request may differ in length; without it they must agree, and every variable output
    # axis is cut to the one length.
    output_lengths: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    # instance_group count: executions allowed in flight at once.
    max_concurrent_batches: int = 1
    # A request that finds the batcher empty (nothing queued, nothing executing, the previous
    # execution a single request) runs at once instead of waiting max_queue_delay_s: no other
    # request is in the server to share its batch, so waiting could only add latency. Under load
    # the batcher is never empty and the delay rule applies unchanged (dispatch.py, rule 3).
    # Config parameter attnserve.dispatch_when_idle (default true).
    dispatch_when_idle: bool = True
    # Padded batches only: a request joins a batch only while the batch's padded size (rows x
    # longest length) stays within (1 + max_padding_ratio) x the rows' real lengths. Padding is
    # computed and thrown away; on CPU a batch of ragged sequences padded to the longest ran
    # fewer rows/s than batches of two (bench/results/encoder_benchmark*). None: no bound
    # (Triton's behaviour). Config parameter attnserve.max_padding_ratio.
    max_padding_ratio: float | None = None

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise through object.__setattr__. The mappings are copied so
        # a caller reusing its dict cannot change a policy the batcher has already read.
        sizes = tuple(sorted(set(self.preferred_batch_sizes)))
        object.__setattr__(self, "preferred_batch_sizes", sizes)
        object.__setattr__(self, "pad_values", dict(self.pad_values))
        object.__setattr__(self, "pad_axes", {k: tuple(v) for k, v in self.pad_axes.items()})
        axes = {k: tuple(v) for k, v in self.variable_output_axes.items()}
        object.__setattr__(self, "variable_output_axes", axes)
        lengths = {k: dict(v) for k, v in self.output_lengths.items()}
        object.__setattr__(self, "output_lengths", lengths)
        if self.default_timeout_s == 0:
            object.__setattr__(self, "default_timeout_s", None)
        self._validate()

    @property
    def batched(self) -> bool:
        """True when tensors carry a batch dimension first."""
        return self.max_batch_size > 0

    @property
    def combines_requests(self) -> bool:
        """True when several requests may share one execution."""
        return self.batched and self.dynamic

    def _validate(self) -> None:
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        for size in self.preferred_batch_sizes:
            if size < 1 or (self.batched and size > self.max_batch_size):
                raise ValueError(
                    f"preferred batch size {size} must be in 1..{self.max_batch_size} "
                    "(max_batch_size)"
                )
        if self.max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {self.max_queue_delay_s}")
        if self.max_queue_size < 0:
            raise ValueError(f"max_queue_size must be >= 0, got {self.max_queue_size}")
        if self.default_timeout_s is not None and self.default_timeout_s < 0:
            raise ValueError(f"default_timeout_s must be >= 0, got {self.default_timeout_s}")
        if self.priority_levels < 0:
            raise ValueError(f"priority_levels must be >= 0, got {self.priority_levels}")
        if self.priority_levels and not 1 <= self.default_priority <= self.priority_levels:
            raise ValueError(
                f"default_priority must be in 1..{self.priority_levels}, "
                f"got {self.default_priority}"
            )
        if self.max_padding_ratio is not None and self.max_padding_ratio < 0:
            raise ValueError(f"max_padding_ratio must be >= 0, got {self.max_padding_ratio}")
        if self.max_concurrent_batches < 1:
            raise ValueError(
                f"max_concurrent_batches must be >= 1, got {self.max_concurrent_batches}"
            )
        for name in self.pad_axes:
            if name not in self.pad_values:
                raise ValueError(f"pad_axes names '{name}', which has no pad value")
        for output, by_axis in self.output_lengths.items():
            for axis, name in by_axis.items():
                if name not in self.pad_values:
                    raise ValueError(
                        f"output_lengths['{output}'] axis {axis} follows '{name}', "
                        "which is not a padded input"
                    )
                if axis not in self.variable_output_axes.get(output, ()):
                    raise ValueError(
                        f"output_lengths['{output}'] names axis {axis}, not one of its "
                        "variable axes"
                    )
        tables = {"pad_axes": self.pad_axes, "variable_output_axes": self.variable_output_axes}
        for what, table in tables.items():
            for name, axes in table.items():
                if not axes or any(axis < 1 for axis in axes):
                    raise ValueError(f"{what}['{name}'] must list axes >= 1, got {axes}")
