"""The one table from domain errors to gRPC status codes, and the wrapper that applies it.

Servicers never choose status codes themselves: they raise (or let through) domain errors and
``grpc_errors`` turns them into ``context.abort`` here. Anything that is not a domain error is
a server fault: the client gets a generic INTERNAL message, the traceback goes to the log.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable, NoReturn, TypeVar

import grpc

from service import errors

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.AttnServeError], grpc.StatusCode] = {
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ModelControlDisabled: grpc.StatusCode.UNAVAILABLE,  # Triton's code for the same refusal
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.QueueFull: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    # Retryable elsewhere (another replica, or this one once the instance is replaced); not
    # DEADLINE_EXCEEDED, which clients read as their own deadline and do not retry.
    errors.ExecutionTimeout: grpc.StatusCode.UNAVAILABLE,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    errors.InternalError: grpc.StatusCode.INTERNAL,
}
INTERNAL_MESSAGE = "internal server error (details in the server log)"
# A message echoes what the client sent (names, sizes); grpc clients drop a status whose details
# pass their metadata limit (8-16 KiB) and report RESOURCE_EXHAUSTED instead, so it is bounded.
MAX_MESSAGE_CHARS = 2000


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status code and client-safe message for any exception."""
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)  # type: ignore[arg-type]
        if code is not None:
            message = exc.message  # type: ignore[attr-defined]
            if code is grpc.StatusCode.INTERNAL:
                # InternalError says where (which model), never the cause; that is in the log.
                message = f"{message}: {INTERNAL_MESSAGE}" if message else INTERNAL_MESSAGE
            if len(message) > MAX_MESSAGE_CHARS:
                suffix = " ... (shortened)"
                message = message[: MAX_MESSAGE_CHARS - len(suffix)] + suffix
            return code, message
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def log_if_fault(exc: BaseException, what: str) -> None:
    """Logs a fault no layer below has logged: a bug or a library error. A domain error was
    logged where it arose if it needed to be (an InternalError with its cause, by the runner or
    the batcher, once per execution): logging it again here would write one traceback per
    request of the batch, a flood when a model fails every batch."""
    if not isinstance(exc, errors.AttnServeError):
        log.error("%s failed", what, exc_info=exc)


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def grpc_errors(method: F) -> F:
    """Wrap a unary grpc.aio handler: domain errors become their status, faults INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except errors.AttnServeError as exc:
            log_if_fault(exc, method.__name__)
            code, message = status_for(exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # a bug or a library fault: never leak its text to clients
            log.exception("%s failed", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
        # Aborted outside the except clause: grpc.aio keeps its AbortError in a reference cycle
        # (with the call's state), and raised inside the clause it would chain the domain
        # error, its traceback and every frame of the request path (inputs included) into it.
        await context.abort(code, message)

    return wrapper  # type: ignore[return-value]


async def abort_with(context: grpc.aio.ServicerContext, exc: errors.AttnServeError) -> NoReturn:
    """End a streaming call with ``exc``'s status (streams have no ``grpc_errors`` wrapper)."""
    code, message = status_for(exc)
    await context.abort(code, message)
