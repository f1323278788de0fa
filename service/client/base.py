"""What the sync and asyncio clients share: the channel and its stubs, call defaults, stream replies.

:class:`ClientBase` opens the channel with ``_grpc`` (``grpc`` for :class:`~service.client.sync.Client`,
``grpc.aio`` for :class:`~service.client.aio.AsyncClient`); the subclasses make the calls.
"""

from __future__ import annotations

from typing import Any, Callable

from grpc_health.v1 import health_pb2_grpc

from service.client import types as t
from service.client.connection import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    TLS,
    ClientError,
    RetryPolicy,
    auth_metadata,
    channel_options,
    target_and_tls,
)
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_grpc
from service.proto.inference import grpc_service_pb2_grpc as v2_grpc

UNSET: Any = object()  # a call's ``timeout`` when the caller gave none: the client's applies


class ClientBase:
    _grpc: Any  # grpc or grpc.aio: the module whose secure_channel / insecure_channel open the channel

    def __init__(
        self, url: str = DEFAULT_URL, *, tls: TLS | None = None, timeout: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        token: str | None = None,
    ) -> None:
        target, tls = target_and_tls(url, tls)
        options = channel_options(tls, max_message_bytes)
        self.url = target
        self._channel = (
            self._grpc.secure_channel(target, tls.credentials(), options) if tls
            else self._grpc.insecure_channel(target, options)
        )
        self._timeout = timeout
        self._retry = retry
        self._metadata = auth_metadata(token)
        self._api = api_grpc.AttnServeStub(self._channel)
        self._v2 = v2_grpc.GRPCInferenceServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _call_timeout(self, timeout: float | None) -> float | None:
        """A call's timeout: the one it was given, else the client's."""
        return self._timeout if timeout is UNSET else timeout


def stream_reply(reply: Any, convert: Callable[[Any], Any]) -> t.StreamReply[Any]:
    """One reply of a stream: its request's index (from the request id) and result or error."""
    index = int(reply.id) if reply.id.isdigit() else -1
    if reply.HasField("error"):
        return t.StreamReply(index, None, ClientError(reply.error.code, reply.error.message))
    return t.StreamReply(index, convert(reply.response), None)
