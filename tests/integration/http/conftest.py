"""Fixtures of the HTTP tier: tritonclient.http (sync and aio) on the shared server's REST port."""

from __future__ import annotations

from typing import AsyncIterator, Iterator

import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient

from tests.conftest import ServerProcess


def address(server: ServerProcess) -> str:
    """HOST:PORT of the REST port, as tritonclient.http takes it (no scheme)."""
    assert server.http_url, "this server has HTTP off"
    return server.http_url.split("://", 1)[1]


@pytest.fixture
def http_client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(address(server), network_timeout=60.0)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def aio_http_client(server: ServerProcess) -> AsyncIterator[aiohttpclient.InferenceServerClient]:
    client = aiohttpclient.InferenceServerClient(address(server))
    try:
        yield client
    finally:
        await client.close()
