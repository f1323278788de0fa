"""TLS, mutual TLS and the bearer token on the HTTP port: the gRPC port's settings apply as they are."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.support import SECNN
from tests.reliability.conftest import Pki

TOKEN = "attnserve-http-token-0123456789abcdef"


def _get(url: str, context: ssl.SSLContext | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_bearer_token_guards_every_route_but_health(start_server, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    server = start_server("--load-model", SECNN, "--auth-token-file", str(token))
    base = server.http_url
    assert _get(f"{base}/v2/health/ready") == 200 and _get(f"{base}/v2/health/live") == 200  # probes carry none
    assert _get(f"{base}/v2/models/{SECNN}") == 401
    assert _get(f"{base}/v2/models/{SECNN}", headers={"Authorization": "Bearer wrong-token-0123456789"}) == 401
    assert _get(f"{base}/v2/models/{SECNN}", headers={"Authorization": f"Bearer {TOKEN}"}) == 200
    request = urllib.request.Request(f"{base}/v2/models/{SECNN}/infer", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert "authorization: Bearer" in json.loads(refused.value.read())["error"]
    assert TOKEN not in server.log


def test_tls_and_client_certificates_on_the_http_port(start_server, pki: Pki) -> None:
    server = start_server(
        "--load-model", SECNN, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca),
    )
    assert server.http_url.startswith("https://")
    base = server.http_url.replace("127.0.0.1", "localhost")
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    with_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_cert.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    assert _get(f"{base}/v2/health/ready", with_cert) == 200
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        _get(f"{base}/v2/health/ready", trusted)  # no client certificate
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        _get(f"http://localhost:{base.rsplit(':', 1)[1]}/v2/health/ready")  # plaintext to a TLS port
