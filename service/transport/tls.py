"""TLS and mutual TLS for the gRPC and HTTP ports, from PEM files named in the settings.

- ``--tls-cert`` and ``--tls-key``: the server's certificate chain and private key; the port
  then speaks only TLS (a plaintext client fails the handshake).
- ``--tls-client-ca``: CA bundle for client certificates; when set, every client must present
  a certificate signed by it (mutual TLS), health checks included.

Files are read once at start; a missing, unreadable or mismatched file stops the server with
a message naming the setting. Rotating certificates means restarting the process (a rolling
restart in Kubernetes).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from service.settings import Settings, SettingsError


def _read(path: Path, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{setting}={str(path)!r}: cannot read it ({exc.strerror or exc})") from exc
    if b"-----BEGIN " not in data:
        raise SettingsError(f"{setting}={str(path)!r}: not a PEM file")
    return data


def _check_pair(cert: Path, key: Path) -> None:
    """Fail at start when the key does not belong to the certificate (the stdlib checks it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise SettingsError(f"tls_cert={str(cert)!r} and tls_key={str(key)!r} do not form a usable pair ({exc.reason or exc})") from exc


def _check_ca(path: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise SettingsError(f"tls_client_ca={str(path)!r}: not a CA certificate bundle ({exc.reason or exc})") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """None when TLS is off; else credentials for ``add_secure_port``."""
    if settings.tls_cert is None:
        return None
    assert settings.tls_key is not None  # the settings require both
    cert = _read(settings.tls_cert, "tls_cert")
    key = _read(settings.tls_key, "tls_key")
    _check_pair(settings.tls_cert, settings.tls_key)
    client_ca = None
    if settings.tls_client_ca is not None:
        client_ca = _read(settings.tls_client_ca, "tls_client_ca")
        _check_ca(settings.tls_client_ca)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Bind the gRPC address, with TLS when configured; returns the port bound."""
    credentials = server_credentials(settings)
    if credentials is None:
        return server.add_insecure_port(settings.grpc_address)
    return server.add_secure_port(settings.grpc_address, credentials)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The same certificate, key and client CA for the HTTP port (issue 16); None when TLS is off."""
    if settings.tls_cert is None:
        return None
    assert settings.tls_key is not None  # the settings require both
    _read(settings.tls_cert, "tls_cert")
    _read(settings.tls_key, "tls_key")
    _check_pair(settings.tls_cert, settings.tls_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_client_ca is not None:
        _read(settings.tls_client_ca, "tls_client_ca")
        _check_ca(settings.tls_client_ca)
        context.load_verify_locations(cafile=str(settings.tls_client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
