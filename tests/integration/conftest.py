"""Fixtures of the integration tier: real clients on the shared server, the reference runtime."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from tests.conftest import ServerProcess
from tests.integration.support import Reference


@pytest.fixture(scope="session")
def reference(model_repository: Path) -> Reference:
    return Reference(model_repository)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.url) as c:
        yield c


@pytest.fixture
async def aio_client(server: ServerProcess) -> AsyncIterator[aioclient.InferenceServerClient]:
    c = aioclient.InferenceServerClient(server.url)
    try:
        yield c
    finally:
        await c.close()
