"""asyncio client: the same calls as :class:`service.client.sync.Client`, awaitable.

    async with AsyncClient("127.0.0.1:8001") as client:
        result = await client.classify(["digit.png"])
        async for reply in client.classify_stream([[a], [b], [c]]):
            ...
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from service.client import requests as rq
from service.client import types as t
from service.client.base import UNSET, ClientBase, stream_reply
from service.client.connection import ClientError, Deadline, should_retry
from service.proto.inference import grpc_service_pb2 as v2


class AsyncClient(ClientBase):
    _grpc = grpc.aio

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- attnserve API -----------------------------------------------------------------------
    async def classify(
        self, images: Iterable[rq.ImageLike], *, top_k: int = 0, channel_weights: bool = False,
        model: str = "", version: str = "", timeout: float | None = UNSET, spatial_attention: bool = False,
        transform: bool = False, attention: rq.Attention = None,
    ) -> t.ClassifyResult:
        request = rq.classify_request(images, model=model, version=version, top_k=top_k, channel_weights=channel_weights,
                                      spatial_attention=spatial_attention, transform=transform, attention=attention)
        return t.classify_result(await self._unary(self._api.Classify, request, timeout))

    async def generate(
        self, count: int = 1, *, classes: int | str | Sequence[int | str] | None = None, seed: int | None = None,
        truncation: float = 0.0, attention: rq.Attention = None, model: str = "", version: str = "",
        timeout: float | None = UNSET,
    ) -> t.Generation:
        request = rq.generate_request(count, classes=classes, seed=seed, truncation=truncation,
                                      attention=attention, model=model, version=version)
        return t.generation(await self._unary(self._api.Generate, request, timeout))

    async def encode(
        self, sequences: Iterable[rq.SequenceLike], *, top_k: int = 0, attention: bool = False,
        model: str = "", version: str = "", timeout: float | None = UNSET,
        sources: Iterable[rq.SequenceLike] = (),
    ) -> t.EncodeResult:
        """``sources``: a pair model's source sequences, one per sequence."""
        request = rq.encode_request(sequences, model=model, version=version, top_k=top_k, attention=attention,
                                    sources=sources)
        return t.encode_result(await self._unary(self._api.Encode, request, timeout))

    def classify_stream(
        self, batches: Iterable[Iterable[rq.ImageLike]] | AsyncIterable[Iterable[rq.ImageLike]], *,
        top_k: int = 0, channel_weights: bool = False, model: str = "", version: str = "",
        timeout: float | None = UNSET,
    ) -> AsyncIterator[t.StreamReply[t.ClassifyResult]]:
        """One request per batch of images; replies in completion order (see ``index``)."""
        build = lambda i, b: rq.classify_request(  # noqa: E731
            b, model=model, version=version, top_k=top_k, channel_weights=channel_weights, request_id=str(i))
        return self._stream(self._api.ClassifyStream, batches, build, t.classify_result, timeout)

    def encode_stream(
        self, batches: Iterable[Iterable[rq.SequenceLike]] | AsyncIterable[Iterable[rq.SequenceLike]], *,
        top_k: int = 0, attention: bool = False, model: str = "", version: str = "",
        timeout: float | None = UNSET,
    ) -> AsyncIterator[t.StreamReply[t.EncodeResult]]:
        build = lambda i, b: rq.encode_request(  # noqa: E731
            b, model=model, version=version, top_k=top_k, attention=attention, request_id=str(i))
        return self._stream(self._api.EncodeStream, batches, build, t.encode_result, timeout)

    # -- v2 surface and health ---------------------------------------------------------------
    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], *, outputs: Sequence[str] = (), version: str = "",
        timeout: float | None = UNSET,
    ) -> dict[str, np.ndarray]:
        reply = await self._unary(self._v2.ModelInfer, rq.infer_request(model, inputs, outputs, version), timeout)
        return rq.infer_outputs(reply)

    async def ready(self, model: str = "", version: str = "", *, timeout: float | None = UNSET) -> bool:
        if model:
            reply = await self._unary(self._v2.ModelReady, v2.ModelReadyRequest(name=model, version=version), timeout)
        else:
            reply = await self._unary(self._v2.ServerReady, v2.ServerReadyRequest(), timeout)
        return reply.ready

    async def health(self, service: str = "", *, timeout: float | None = UNSET) -> str:
        reply = await self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # -- plumbing ----------------------------------------------------------------------------
    async def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        deadline = Deadline(self._call_timeout(timeout))
        pauses = self._retry.backoffs()
        while True:
            try:
                return await method(request, timeout=deadline.remaining(), metadata=self._metadata)
            except grpc.RpcError as error:
                pause = next(pauses, None)
                if not should_retry(error, deadline, pause):
                    raise ClientError.from_rpc(error) from None
            await asyncio.sleep(pause)  # type: ignore[arg-type]

    async def _stream(
        self, method: Callable[..., Any], batches: Any, build: Callable[[int, Any], Any],
        convert: Callable[[Any], Any], timeout: float | None,
    ) -> AsyncIterator[t.StreamReply[Any]]:
        call = method(timeout=self._call_timeout(timeout), metadata=self._metadata)
        failure: list[BaseException] = []

        async def send() -> None:
            # Building requests (file reads, PNG encoding) can fail midway; the call is then
            # cancelled so the reply loop below ends, and the failure is raised from there.
            try:
                index = 0
                if isinstance(batches, AsyncIterable):
                    async for batch in batches:
                        await call.write(build(index, batch))
                        index += 1
                else:
                    for index, batch in enumerate(batches):
                        await call.write(build(index, batch))
                await call.done_writing()
            except Exception as exc:
                failure.append(exc)
                call.cancel()

        sender = asyncio.create_task(send())
        try:
            async for reply in call:
                yield stream_reply(reply, convert)
            await sender
            if failure:
                raise failure[0]
        except (grpc.RpcError, asyncio.CancelledError) as error:
            if failure:
                raise failure[0] from None
            if isinstance(error, grpc.RpcError):
                raise ClientError.from_rpc(error) from None
            raise
        finally:
            sender.cancel()
            call.cancel()
