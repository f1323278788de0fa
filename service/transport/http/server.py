"""The HTTP/REST listener: aiohttp's low-level server on the gRPC server's event loop.

Why aiohttp, and its low-level ``web.Server`` rather than an ``Application``:

- it is asyncio-native and runs on the loop that is already running (uvloop by default,
  service/eventloop.py): no second thread, loop or executor, and the handlers await the same
  batcher futures the gRPC servicers do. An ASGI server (uvicorn, hypercorn) owns its own loop
  and lifecycle and would put a framework between the socket and the handler;
- it is maintained (aio-libs, releases every few weeks) and its HTTP parser is C (llhttp), so
  parsing a request is a small part of its cost;
- the low-level server hands each request to one coroutine: no router, middleware chain or
  signals per request. Routing here is a table of about twenty segment patterns (routing.py).

Per request: route, bearer token (except the health probes), body size from Content-Length
before a byte of the body is read (413), then the handler; every failure is one JSON
``{"error": ...}`` answer from the shared error table (errors.py), and the server keeps serving.
While the server drains, answers carry ``Connection: close`` so clients reconnect elsewhere.
A client that disconnects cancels its handler, which removes its queued work from the batcher,
as a cancelled gRPC call does.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Sequence

from aiohttp import web

from service.dataplane import DataPlane
from service.settings import Settings
from service.transport import auth
from service.transport.http.routing import HttpError, Route, Router, error_response, too_large
from service.transport.tls import ssl_context

log = logging.getLogger(__name__)

UNAUTHENTICATED = {"WWW-Authenticate": 'Bearer realm="attnserve"'}


class HttpServer:
    def __init__(
        self,
        routes: Sequence[Route],
        dataplane: DataPlane,
        *,
        max_body_bytes: int,
        token: auth.BearerTokenAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_concurrent: int = 0,
    ) -> None:
        """``max_concurrent`` (0: none) bounds the requests handled at once, as
        --max-concurrent-rpcs bounds the gRPC port's calls; the health probes are not counted, so a
        saturated replica is not restarted by its liveness probe."""
        self._router = Router(routes)
        self._max_concurrent = max_concurrent
        self._active = 0
        self._dataplane = dataplane
        self._max_body_bytes = max_body_bytes
        self._token = token
        self._ssl = ssl_context
        self._web: web.Server | None = None
        self._listener: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def scheme(self) -> str:
        return "https" if self._ssl is not None else "http"

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        route = None
        try:
            route, captured = self._router.resolve(request.method, request.path)
            if self._token is not None and not route.public:
                self._authenticate(request)
            if route.body:
                length = request.content_length
                if length is not None and length > self._max_body_bytes:
                    raise too_large(self._max_body_bytes)
            if route.public or not self._max_concurrent:
                response = await route.handler(request, *captured)
            else:
                if self._active >= self._max_concurrent:
                    raise HttpError(429, f"the server is handling its limit of {self._max_concurrent} concurrent "
                                         "requests (--max-concurrent-rpcs); retry", {"Retry-After": "1"})
                self._active += 1
                try:
                    response = await route.handler(request, *captured)
                finally:
                    self._active -= 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            response = error_response(exc, f"HTTP {request.method} {request.path}")
            if isinstance(exc, HttpError) and exc.status == 413:
                response.force_close()  # the unread body is not worth reading to keep the connection
        if self._dataplane.draining:
            response.force_close()
        return response

    def _authenticate(self, request: web.BaseRequest) -> None:
        assert self._token is not None
        refusal = self._token.allows([(auth.HEADER, v) for v in request.headers.getall("Authorization", ())])
        if refusal is not None:
            log.info("refused HTTP %s %s: %s", request.method, request.path, refusal)
            message = auth.MISSING.replace("the metadata", "the header") if refusal == auth.MISSING else refusal
            raise HttpError(401, message, UNAUTHENTICATED)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        """Bind ``host:port`` (0 picks one) on the running loop; returns the port bound."""
        self._web = web.Server(
            self.handle,
            request_factory=self._make_request,
            handler_cancellation=True,
            access_log=None,  # a log line per request costs more than the request (metrics count them)
        )
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._web, host, port, ssl=self._ssl, reuse_address=True, backlog=1024)
        self.port = int(self._listener.sockets[0].getsockname()[1])
        return self.port

    def _make_request(self, message, payload, protocol, writer, task) -> web.BaseRequest:  # type: ignore[no-untyped-def]
        # A chunked body (no Content-Length) is cut off at the same limit while it is read.
        return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                               client_max_size=self._max_body_bytes)

    async def stop(self, grace: float) -> None:
        """Stop listening, let the requests being handled finish (within ``grace``), close the
        connections. Called after the drain, when everything accepted has been answered."""
        if self._listener is None or self._web is None:
            return
        self._listener.close()
        self._web.pre_shutdown()  # idle keep-alive connections close; busy ones after their answer
        await self._web.shutdown(grace)
        await self._listener.wait_closed()
        self._listener = None


def build_http_server(settings: Settings, routes: Sequence[Route], dataplane: DataPlane) -> HttpServer:
    """The HTTP server with the gRPC port's TLS and bearer token (issue 8), not yet bound."""
    return HttpServer(
        routes,
        dataplane,
        max_body_bytes=settings.max_message_bytes,
        token=auth.from_settings(settings),
        ssl_context=ssl_context(settings),
        max_concurrent=settings.max_concurrent_rpcs,
    )
