"""Per-model dynamic batching: queue, deadlines, cancellation, priorities, shape groups.

Knows nothing of protobuf or ONNX Runtime: it takes validated numpy inputs (batch dim first)
and calls an injected async ``execute`` with each concatenated batch. Importing this package
does no work.
"""

from service.batching.batcher import DynamicBatcher
from service.batching.observer import BatchObserver, Execute, NullObserver
from service.batching.policy import BatchingPolicy

__all__ = ["BatchObserver", "BatchingPolicy", "DynamicBatcher", "Execute", "NullObserver"]
