"""Channel set-up, errors and the retry rule shared by the sync and asyncio clients.

Retries are only for what is safe to repeat: a unary call that failed with UNAVAILABLE (the
server is starting, draining, or its queue is full). Every unary call of both surfaces that
the clients expose is idempotent (inference has no side effects; Generate with a seed is
deterministic and without one simply draws again), so each may be retried. Streams are
never retried: part of them may already have been answered. Back-off is exponential with
full jitter, and never runs past the call's deadline.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_TIMEOUT_S = 30.0
# Matches the server's default --max-message-bytes (grpcio's own default is 4 MiB, too small
# for a batch of images or a full attention map).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class ClientError(Exception):
    """A call failed: ``code`` is the gRPC status name, ``details`` the server's message."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> "ClientError":
        code = error.code()  # type: ignore[attr-defined]
        return cls(code.name if code is not None else "UNKNOWN", error.details() or "")  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TLS:
    """TLS for the channel. With no paths, the system's root certificates verify the server;
    ``certificate_chain`` + ``private_key`` add a client certificate (mutual TLS)."""

    root_certificates: Path | None = None
    certificate_chain: Path | None = None
    private_key: Path | None = None
    server_name: str | None = None  # name to verify the server certificate against

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("a client certificate needs both certificate_chain and private_key")
        read = lambda p: None if p is None else Path(p).read_bytes()  # noqa: E731
        return grpc.ssl_channel_credentials(
            read(self.root_certificates), read(self.private_key), read(self.certificate_chain)
        )


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # tries in all, the first included
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def backoffs(self) -> Iterator[float]:
        """The pause before each retry (full jitter: uniform in [0, cap])."""
        cap = self.initial_backoff_s
        for _ in range(self.attempts - 1):
            yield random.uniform(0, cap)
            cap = min(cap * self.multiplier, self.max_backoff_s)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """Bearer-token metadata for servers that require it (``attnserve serve --auth-token-file``)."""
    return (("authorization", f"Bearer {token}"),) if token else None


def target_and_tls(url: str, tls: TLS | None) -> tuple[str, TLS | None]:
    """``HOST:PORT``, ``grpc://HOST:PORT`` or ``grpcs://HOST:PORT`` (TLS with system roots)."""
    if url.startswith("grpcs://"):
        return url.removeprefix("grpcs://"), tls or TLS()
    return url.removeprefix("grpc://"), tls


def channel_options(tls: TLS | None, max_message_bytes: int) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


class Deadline:
    """One call's overall deadline across its retries."""

    def __init__(self, timeout: float | None) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        return None if self._end is None else max(self._end - time.monotonic(), 0.0)

    def allows(self, pause: float) -> bool:
        left = self.remaining()
        return left is None or left > pause


def should_retry(error: grpc.RpcError, deadline: Deadline, pause: float | None) -> bool:
    """Retry when the status is retryable, a retry is left (pause) and the deadline allows it."""
    return pause is not None and error.code() in RETRYABLE and deadline.allows(pause)  # type: ignore[attr-defined]
