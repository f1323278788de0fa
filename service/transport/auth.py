"""Optional bearer-token check on every RPC except grpc.health.v1 (probes carry no token).

Enabled by ``--auth-token-file PATH`` or ``ATTNSERVE_AUTH_TOKEN``. A call must carry the
metadata ``authorization: Bearer <token>``; the token is compared in constant time
(:func:`hmac.compare_digest`), and a call without it, or with another token, is refused with
UNAUTHENTICATED before its request bytes are parsed. The token is a shared secret for the
whole server: this is a gate against unauthenticated callers, not per-client authorization.
Use it over TLS, or the token crosses the network in clear text.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from pathlib import Path
from typing import Awaitable, Callable, Sequence

import grpc

from service.settings import Settings, SettingsError
from service.transport.interceptors import aborting

log = logging.getLogger(__name__)

HEADER = "authorization"
SCHEME = "bearer"
# Kubernetes and Docker probe health without credentials.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
MISSING = "missing credentials: send the metadata 'authorization: Bearer <token>'"
INVALID = "invalid bearer token"
MIN_TOKEN_CHARS = 16


def read_token(path: Path | None, value: str) -> str:
    """The configured token ('' when auth is off); SettingsError when it cannot be used."""
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"auth_token_file={str(path)!r}: cannot read it ({exc})") from exc
        source = f"auth_token_file={str(path)!r}"
    else:
        source = "ATTNSERVE_AUTH_TOKEN"
    token = value.strip()
    if path is None and not token:
        return ""
    if len(token) < MIN_TOKEN_CHARS:
        raise SettingsError(f"{source}: the token must be at least {MIN_TOKEN_CHARS} characters")
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in token):
        raise SettingsError(f"{source}: the token must be printable ASCII without spaces")
    return token


def _credentials(metadata: Sequence[tuple[str, str | bytes]] | None) -> list[bytes]:
    """The tokens of every ``authorization: Bearer`` entry of the call's metadata."""
    found = []
    for key, value in metadata or ():
        if key.lower() != HEADER:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == SCHEME:
            found.append(token.strip().encode("utf-8", "replace"))
    return found


class BearerTokenAuth(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, exempt_prefixes: Sequence[str] = EXEMPT_PREFIXES) -> None:
        if not token:
            raise ValueError("an empty token would let every caller in")
        self._token = token.encode("utf-8")
        self._exempt = tuple(exempt_prefixes)

    def allows(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        """None when the call may go on, else the refusal message."""
        tokens = _credentials(metadata)
        if not tokens:
            return MISSING
        # Every entry is compared, so the time taken does not depend on which one matches.
        matched = False
        for token in tokens:
            matched |= hmac.compare_digest(token, self._token)
        return None if matched else INVALID

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self._exempt):
            return handler
        refusal = self.allows(details.invocation_metadata)
        if refusal is None:
            return handler
        log.info("refused %s: %s", details.method, refusal)
        return aborting(handler, grpc.StatusCode.UNAUTHENTICATED, refusal)


def from_settings(settings: Settings) -> BearerTokenAuth | None:
    """The interceptor for the configured token, or None when auth is off."""
    token = read_token(settings.auth_token_file, settings.auth_token)
    if not token:
        return None
    if settings.tls_cert is None and not _is_loopback(settings.host):
        log.warning("bearer-token auth without TLS on %s: tokens cross the network in clear text", settings.host)
    return BearerTokenAuth(token)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
