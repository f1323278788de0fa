"""Fixtures of the attnserve API tier: our own client (sync, asyncio, raw stub) on the shared
server, a server with small API limits, and the model's preprocessing as its config says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import AsyncIterator, Iterator

import grpc
import pytest

from service.client import AsyncClient, Client
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_grpc
from tests.conftest import ServerProcess
from tests.integration.support import SECNN, spec_of

# Small enough to reach with tiny requests; big enough for the default models' real inputs.
SMALL_LIMITS = {
    "--api-max-image-bytes": "2048",
    "--api-max-image-pixels": "4096",
    "--api-max-items": "4",
    "--api-max-tokens": "16",
}


@pytest.fixture
def api(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url, timeout=120) as client:
        yield client


@pytest.fixture
async def aio_api(server: ServerProcess) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(server.url, timeout=120)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[api_grpc.AttnServeStub]:
    """The generated stub, for checks at the protocol level (status codes, raw fields)."""
    with grpc.insecure_channel(server.url) as channel:
        yield api_grpc.AttnServeStub(channel)


@pytest.fixture(scope="module")
def limited_server(model_repository: Path) -> Iterator[ServerProcess]:
    flags = [part for item in SMALL_LIMITS.items() for part in item]
    process = ServerProcess(model_repository, *flags).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def preprocess(model_repository: Path) -> dict:
    """The classifier's attnserve.preprocess parameter, read from its config.pbtxt."""
    return json.loads(spec_of(model_repository, SECNN).parameters["attnserve.preprocess"])


@pytest.fixture(scope="session")
def tokenizer_spec(model_repository: Path) -> dict:
    return json.loads((model_repository / "transformer_encoder" / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def labels(model_repository: Path) -> dict[str, list[str]]:
    return {
        name: (model_repository / name / "labels.txt").read_text(encoding="utf-8").split()
        for name in ("sagan_generator", "se_cnn_classifier", "transformer_encoder")
    }
