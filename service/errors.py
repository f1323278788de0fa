"""Domain errors raised by every layer below the transport.

They carry no gRPC types: ``service/transport/status.py`` holds the one table that maps each
class to a status code, so the batcher and runner stay transport-agnostic.
"""

from __future__ import annotations


class AttnServeError(Exception):
    """Base class. ``message`` is safe to show to clients."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(AttnServeError):
    """No model (or no such version) with that name in the repository."""


class ModelNotReady(AttnServeError):
    """The model exists but is loading, unloading, or failed to load."""


class ModelLoadError(AttnServeError):
    """Loading a model failed (bad config, missing or corrupt ONNX file, warm-up failure)."""


class ModelControlDisabled(AttnServeError):
    """A load/unload RPC while the model control mode (none, poll) does not allow it."""


class InvalidInput(AttnServeError):
    """The request does not match the model: names, dtypes, shapes, byte counts, limits."""


class QueueFull(AttnServeError):
    """The model's queue is at max_queue_size; the request was refused before acceptance."""


class DeadlineExceeded(AttnServeError):
    """The request's deadline or queue timeout passed before it could be computed."""


class ExecutionTimeout(AttnServeError):
    """An execution ran past the model's execution timeout and was abandoned (the instance is
    replaced). Not the client's deadline: the request may succeed elsewhere, so it is retryable."""


class Cancelled(AttnServeError):
    """The caller went away before the request was computed."""


class ShuttingDown(AttnServeError):
    """The server is draining; new work is refused."""


class InternalError(AttnServeError):
    """A fault inside the server. The message says where (the model), never the cause: the client
    sees it with a pointer to the server log, where the cause is."""
