"""Python client for attnserve: both surfaces (attnserve API and v2), sync and asyncio.

    from service.client import Client
    with Client("127.0.0.1:8001") as client:
        print(client.classify(["digit.png"]).items[0].top)

See :mod:`service.client.sync` for the calls; :mod:`service.client.aio` has the same ones,
awaitable. The ``attnserve`` console script's client verbs are built on it (client/cli.py).
"""

from service.client.aio import AsyncClient
from service.client.connection import NO_RETRY, TLS, ClientError, RetryPolicy
from service.client.sync import Client
from service.client.types import (
    AttentionGrid,
    AttentionMap,
    Classification,
    ClassifyResult,
    EncodeResult,
    Encoding,
    GeneratedImage,
    Generation,
    Label,
    StreamReply,
)

__all__ = [
    "AsyncClient", "AttentionGrid", "AttentionMap", "Classification", "ClassifyResult", "Client",
    "ClientError", "EncodeResult", "Encoding", "GeneratedImage", "Generation", "Label", "NO_RETRY",
    "RetryPolicy", "StreamReply", "TLS",
]
