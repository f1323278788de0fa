"""Domain errors -> HTTP statuses: the gRPC table (service/transport/status.py) read for HTTP.

The message and what a client may see of it come from :func:`status_for`, so both transports
say the same words; only the number differs. Each gRPC code has one HTTP status, Triton's
where Triton has one, and ``BY_ERROR`` says where HTTP can tell more than the gRPC code: a full
queue is UNAVAILABLE over gRPC (retry elsewhere) but 429 over HTTP, the status HTTP clients and
proxies back off on. Every answer is JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import grpc

from service import errors
from service.transport.status import status_for

BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,  # a model that failed to load: Triton answers 400
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,  # the client closed the request (nginx's and Triton's code)
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,  # not ready, draining, load/unload not allowed: retryable
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
BY_ERROR: dict[type[errors.AttnServeError], int] = {
    errors.QueueFull: 429,
}


def http_status_for(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, gRPC code name for metrics and logs, client-safe message) for any exception."""
    code, message = status_for(exc)
    for cls in type(exc).__mro__:
        status = BY_ERROR.get(cls)  # type: ignore[arg-type]
        if status is not None:
            return status, code.name, message
    return BY_CODE.get(code, 500), code.name, message
