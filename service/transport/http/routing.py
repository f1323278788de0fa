"""Routes, bodies and JSON answers: what the REST handlers share, and the one error answer.

A route is a method, a path pattern of literal segments and ``{}`` captures, and an async
handler called with the request and the captured segments. Matching splits the path once and
compares segments: about twenty routes, so a table scan costs less than a regex router would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from aiohttp import web

from service.codec.v2_http import dumps, parse_json
from service.errors import InvalidInput
from service.transport.http.errors import http_status_for
from service.transport.status import log_if_fault

log = logging.getLogger(__name__)

JSON = "application/json"
Handler = Callable[..., Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """A refusal that has no domain error: no such route, wrong method, too large, no token."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Route:
    method: str
    pattern: tuple[str, ...]  # literal segments and "{}" captures
    handler: Handler
    public: bool = False  # answered without the bearer token (health probes carry none)
    body: bool = False  # reads a body (its size is checked before it is read)

    def match(self, parts: Sequence[str]) -> list[str] | None:
        if len(parts) != len(self.pattern):
            return None
        captured = []
        for have, want in zip(parts, self.pattern):
            if want == "{}":
                if not have:
                    return None
                captured.append(have)
            elif have != want:
                return None
        return captured


def with_versions(method: str, prefix: tuple[str, ...], suffix: tuple[str, ...], handler: Handler, **kw: Any) -> list[Route]:
    """``/v2/models/{m}<suffix>`` and ``/v2/models/{m}/versions/{v}<suffix>``; the handler gets
    (request, model, version) with version "" for the first."""

    async def unversioned(request: web.BaseRequest, model: str) -> web.StreamResponse:
        return await handler(request, model, "")

    return [
        Route(method, prefix + suffix, unversioned, **kw),
        Route(method, prefix + ("versions", "{}") + suffix, handler, **kw),
    ]


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = tuple(routes)

    def resolve(self, method: str, path: str) -> tuple[Route, list[str]]:
        parts = path.strip("/").split("/")
        allowed = []
        for route in self._routes:
            captured = route.match(parts)
            if captured is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, captured
            allowed.append(route.method)
        if allowed:
            raise HttpError(405, f"{method} is not allowed on {path}; use {' or '.join(sorted(set(allowed)))}",
                            {"Allow": ", ".join(sorted(set(allowed)))})
        raise HttpError(404, f"no route {path}")


# -- answers -----------------------------------------------------------------------------------
RETRYABLE = frozenset({429, 503})  # queue full; not ready, draining, unloading, stuck
def json_response(document: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(document), status=status, content_type=JSON)


def empty_response(status: int = 200) -> web.Response:
    return web.Response(status=status)


def error_response(exc: BaseException, what: str) -> web.Response:
    """The JSON error answer for any exception; a fault is logged with its traceback."""
    if isinstance(exc, HttpError):
        response = json_response({"error": exc.message}, exc.status)
        response.headers.update(exc.headers)
        return response
    log_if_fault(exc, what)
    status, _code, message = http_status_for(exc)
    response = json_response({"error": message}, status)
    if status in RETRYABLE:
        # RFC 9110: how long to wait before retrying. One second: a full queue or a draining
        # replica clears in well under that, and proxies (and KServe's) honour the header.
        response.headers["Retry-After"] = "1"
    return response


# -- bodies ------------------------------------------------------------------------------------
async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes. With a Content-Length the size was checked
    before any byte was read (see HttpServer); a chunked body is cut off at the limit."""
    length = request.content_length
    if length is None:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large(limit) from None
    if length == 0:
        return b""
    try:
        return await request.content.readexactly(length)
    except Exception as exc:  # IncompleteReadError: the client stopped sending
        raise InvalidInput(f"the body ended before its Content-Length of {length} bytes") from exc


def too_large(limit: int) -> HttpError:
    return HttpError(413, f"request body larger than the limit of {limit} bytes (--max-message-bytes)")


async def json_body(request: web.BaseRequest, limit: int) -> Any:
    """A JSON body, or None when the body is empty (optional bodies: index, load, unload)."""
    body = await read_body(request, limit)
    return parse_json(body) if body.strip() else None
