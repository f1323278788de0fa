"""Server interceptors that apply to every RPC, and the plumbing they share.

``MalformedMessageGuard``: grpcio deserializes a request before any handler runs, and when the
bytes are not a valid message it answers UNKNOWN with a DecodeError traceback in the log (for
unary calls) or, for a request stream, leaves the stream's reader waiting forever. The guard
parses requests itself and turns bytes that are not the method's message into
INVALID_ARGUMENT, logged at DEBUG. In a stream, the messages before the bad one are answered,
then the stream ends with INVALID_ARGUMENT.

``replace_behaviour`` builds a handler of the same kind (unary or streaming on each side) with
another behaviour; the bearer-token check in :mod:`service.transport.auth` uses it too.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

log = logging.getLogger(__name__)

Deserializer = Callable[[bytes], Any]


def replace_behaviour(
    handler: grpc.RpcMethodHandler,
    behaviour: Callable[..., Any],
    *,
    request_deserializer: Deserializer | None,
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind and response serializer running ``behaviour``."""
    serialize = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviour, request_deserializer, serialize)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behaviour, request_deserializer, serialize)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behaviour, request_deserializer, serialize)
    return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer, serialize)


def inner_behaviour(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    if handler.request_streaming and handler.response_streaming:
        return handler.stream_stream
    if handler.request_streaming:
        return handler.stream_unary
    if handler.response_streaming:
        return handler.unary_stream
    return handler.unary_unary


def aborting(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that refuses the call without reading a message."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_streaming(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - never reached; makes this an async generator

    behaviour = refuse_streaming if handler.response_streaming else refuse
    # No deserializer: a refused caller's bytes are never parsed.
    return replace_behaviour(handler, behaviour, request_deserializer=None)


class _Malformed:
    """Stands in for a request whose bytes did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _message_name(deserialize: Deserializer) -> str:
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request")


class MalformedMessageGuard(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        # One guarded handler per method, built on its first call. Only methods the server
        # has are kept (an unknown name gets None from the continuation), so it stays small.
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        guarded = self._guarded.get(details.method)
        if guarded is not None:
            return guarded
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        guarded = self._guarded[details.method] = guard(handler, details.method)
        return guarded


def guard(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` with malformed requests answered INVALID_ARGUMENT."""
    deserialize = handler.request_deserializer
    inner = inner_behaviour(handler)
    if not (inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner)):
        return handler  # a synchronous handler (grpcio allows them; none here): left to grpcio
    message = f"the request is not a valid {_message_name(deserialize)} message"

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, or anything a custom deserializer raises
            return _Malformed(exc)

    async def refuse(context: grpc.aio.ServicerContext, bad: _Malformed) -> None:
        log.debug("%s: malformed request: %s", method, bad.error)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

    if not handler.request_streaming:
        if handler.response_streaming and not inspect.isasyncgenfunction(inner):
            # A streaming handler written as a coroutine that answers with context.write
            # (grpc_health's Watch): the wrapper must be a coroutine too.
            async def unary_stream_writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Malformed):
                    await refuse(context, request)
                return await inner(request, context)

            return replace_behaviour(handler, unary_stream_writer, request_deserializer=parse)

        if handler.response_streaming:

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, _Malformed):
                    await refuse(context, request)
                async for reply in inner(request, context):
                    yield reply

            return replace_behaviour(handler, unary_stream, request_deserializer=parse)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                await refuse(context, request)
            return await inner(request, context)

        return replace_behaviour(handler, unary, request_deserializer=parse)

    if not (handler.response_streaming and inspect.isasyncgenfunction(inner)):
        # A stream read with context.read() never passes through the iterator below, and
        # there is no stream-unary method here: both are left to grpcio.
        return handler

    # A request stream: end it at the first malformed message (as if the client had
    # half-closed), let the handler answer what came before, then fail the call.
    async def checked(requests: AsyncIterator[Any], seen: list[_Malformed]) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Malformed):
                seen.append(request)
                return
            yield request

    async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        seen: list[_Malformed] = []
        async for reply in inner(checked(requests, seen), context):
            yield reply
        if seen:
            await refuse(context, seen[0])

    return replace_behaviour(handler, stream_stream, request_deserializer=parse)
