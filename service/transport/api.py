"""``attnserve.v1.AttnServe``: images, token sequences and seeds in; labels, PNGs and attention out.

Thin like the v2 servicer: resolve the model, let the codec check the request against the
model (``plan_*``), decode, call :meth:`DataPlane.infer` (the same per-model batcher the v2
surface feeds), encode. Image decoding and PNG encoding are CPU work, so they run in worker
threads and the event loop keeps answering other calls. Status codes come from
:mod:`service.transport.status`; nothing here picks one.

How requests meet the batcher:
- Classify and Generate send their rows in requests of at most ``max_batch_size`` rows;
- Encode sends each sequence as its own one-row request, so the batcher pads it among the
  others of its batch and cuts the outputs (attention included) back to its own length;
- the streams run up to ``STREAM_WINDOW`` messages at once and answer each as it completes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, TypeVar

import grpc
import numpy as np

from service.codec import api, latent
from service.codec.images import ImageLimits, decode_images
from service.dataplane import REFUSAL, DataPlane
from service.errors import InvalidInput, ShuttingDown
from service.proto.attnserve.v1 import attnserve_pb2 as pb
from service.proto.attnserve.v1 import attnserve_pb2_grpc as pb_grpc
from service.repository import LoadedModel
from service.settings import Settings
from service.transport.assets import AssetCache
from service.transport.inference import deadline_of
from service.transport.observe import observed
from service.transport.status import abort_with, grpc_errors, log_if_fault, status_for

log = logging.getLogger(__name__)

SURFACE = "api"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AttnServe"].full_name
# Messages of one stream being computed or waiting to be sent. Past this the server stops
# reading the stream, and gRPC flow control slows the client down instead of memory growing.
STREAM_WINDOW = 64
# Put in a stream's reply queue when the server closes: the stream ends (UNAVAILABLE).
_CLOSING = object()

Request = TypeVar("Request", pb.ClassifyRequest, pb.EncodeRequest)


def api_limits(settings: Settings) -> api.ApiLimits:
    return api.ApiLimits(
        images=ImageLimits(max_bytes=settings.api_max_image_bytes, max_pixels=settings.api_max_image_pixels),
        max_items=settings.api_max_items,
        max_tokens=settings.api_max_tokens,
    )


def draw_seed() -> int:
    """A seed for a Generate call that gave none (32 bits: short enough to type back in)."""
    return secrets.randbits(32)


class AttnServeServicer(pb_grpc.AttnServeServicer):
    def __init__(
        self, dataplane: DataPlane, limits: api.ApiLimits, *,
        assets: AssetCache | None = None, seeds: Callable[[], int] = draw_seed,
    ) -> None:
        self._dataplane = dataplane
        self._limits = limits
        self._assets = assets or AssetCache()
        self._seeds = seeds

    # -- RPCs ----------------------------------------------------------------------------
    @grpc_errors
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        return await self.classify(request, deadline_of(context))

    async def ClassifyStream(
        self, request_iterator: AsyncIterator[pb.ClassifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        handle = lambda r: self.classify(r, deadline_of(context))  # noqa: E731
        replies = answer_each(request_iterator, handle, pb.ClassifyStreamResponse, "ClassifyStream", self._dataplane)
        async for reply in closing_with_status(replies, context):
            yield reply

    @grpc_errors
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        return await self.generate(request, deadline_of(context))

    @grpc_errors
    async def Encode(self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext) -> pb.EncodeResponse:
        return await self.encode(request, deadline_of(context))

    async def EncodeStream(
        self, request_iterator: AsyncIterator[pb.EncodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EncodeStreamResponse]:
        handle = lambda r: self.encode(r, deadline_of(context))  # noqa: E731
        replies = answer_each(request_iterator, handle, pb.EncodeStreamResponse, "EncodeStream", self._dataplane)
        async for reply in closing_with_status(replies, context):
            yield reply

    # -- decode -> infer -> encode: the RPCs without their gRPC context -----------------------
    # The REST routes (service/transport/http/api.py) call these too, with protocol "http".
    async def classify(self, request: pb.ClassifyRequest, deadline: float | None, protocol: str = "grpc") -> pb.ClassifyResponse:
        model = self._dataplane.model(request.model or api.DEFAULT_CLASSIFIER, request.version)
        with observed(model, SURFACE, protocol):
            assets = self._assets.get(model)
            plan = api.plan_classify(request, model.spec, assets, self._limits)
            images = await asyncio.to_thread(decode_images, list(request.images), plan.preprocess, self._limits.images)
            outputs = await self._infer_rows(model, {plan.input: images}, deadline)
            if plan.extras.transform or plan.extras.windows:  # PNGs and big maps: off the loop
                return await asyncio.to_thread(
                    api.classify_response, request, model.name, model.version, outputs, plan, assets
                )
            return api.classify_response(request, model.name, model.version, outputs, plan, assets)

    async def generate(self, request: pb.GenerateRequest, deadline: float | None, protocol: str = "grpc") -> pb.GenerateResponse:
        model = self._dataplane.model(request.model or api.DEFAULT_GENERATOR, request.version)
        with observed(model, SURFACE, protocol):
            assets = self._assets.get(model)
            plan = latent.plan_generate(request, model.spec, assets, self._limits, self._seeds)
            outputs = await self._infer_rows(model, latent.generator_inputs(plan), deadline)
            return await asyncio.to_thread(latent.generate_response, model.name, model.version, plan, outputs, assets)

    async def encode(self, request: pb.EncodeRequest, deadline: float | None, protocol: str = "grpc") -> pb.EncodeResponse:
        model = self._dataplane.model(request.model or api.DEFAULT_ENCODER, request.version)
        with observed(model, SURFACE, protocol):
            assets = self._assets.get(model)
            plan = api.plan_encode(request, model.spec, assets, self._limits)
            tokens = api.tokens_of(request, plan)
            sources = api.tokens_of(request, plan, "sources") if plan.pair else []
            inputs = (
                [api.pair_inputs(q, s) for q, s in zip(tokens, sources, strict=True)]
                if plan.pair else [api.encoder_inputs(t) for t in tokens]
            )
            outputs = await all_of(self._dataplane.infer(model, i, deadline=deadline) for i in inputs)
            # Attention maps make big replies (heads x T x T floats per sequence): off the loop.
            return await asyncio.to_thread(
                api.encode_response, request, model.name, model.version, tokens, outputs, plan, assets, sources
            )

    async def _infer_rows(
        self, model: LoadedModel, inputs: Mapping[str, np.ndarray], deadline: float | None
    ) -> dict[str, np.ndarray]:
        """Rows beyond max_batch_size go as several requests, computed concurrently."""
        size = model.spec.max_batch_size
        if size <= 0:
            raise InvalidInput(f"model {model.name!r} has no batch dimension; the attnserve API needs one")
        parts = await all_of(
            self._dataplane.infer(model, part, deadline=deadline) for part in api.split_rows(inputs, size)
        )
        return api.join_rows(parts)


async def all_of(calls: Iterable[Awaitable[dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    """Await every call; on the first failure cancel the others (removing their queued work
    from the batcher) and raise that failure."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # collect them: no stray warnings
        raise


async def closing_with_status(replies: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    """``replies``, then the stream's end: UNAVAILABLE when the server closed it."""
    try:
        async for reply in replies:
            yield reply
    except ShuttingDown as exc:
        await abort_with(context, exc)


async def answer_each(
    requests: AsyncIterator[Request],
    handle: Callable[[Request], Awaitable[Any]],
    reply_type: Callable[..., Any],
    what: str,
    dataplane: DataPlane,
) -> AsyncIterator[Any]:
    """Answer every message of a stream with one reply, in completion order.

    A failed message is answered with ``error`` (the status the unary RPC would have given;
    UNAVAILABLE while the server drains) and the stream goes on. Messages run concurrently, so
    one stream can fill a batch. When the server closes, the stream reads no more, answers
    what it accepted and raises ShuttingDown, so the call ends with UNAVAILABLE rather than
    being cut off when grpc stops.
    """
    replies: asyncio.Queue[Any] = asyncio.Queue()
    window = asyncio.Semaphore(STREAM_WINDOW)
    pending: set[asyncio.Task[None]] = set()

    async def one(request: Request) -> None:
        try:
            reply = reply_type(response=await handle(request), id=request.id)
        except Exception as exc:
            log_if_fault(exc, what)
            code, message = status_for(exc)
            reply = reply_type(error=pb.StreamError(code=code.name, message=message), id=request.id)
        await replies.put(reply)

    async def read_all() -> None:
        try:
            async for request in requests:
                await window.acquire()  # released once its reply is sent
                task = asyncio.create_task(one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*list(pending))
        finally:
            await replies.put(None)

    reader = asyncio.create_task(read_all())
    try:
        with dataplane.stream_open(lambda: replies.put_nowait(_CLOSING)):
            while (reply := await replies.get()) is not None and reply is not _CLOSING:
                yield reply
                window.release()
        if reply is None:
            await reader  # re-raises a broken request stream
            return
        reader.cancel()  # read no more: what the client sends from now on is not accepted
        await asyncio.gather(*list(pending))  # the accepted ones; each put its reply
        while not replies.empty():
            if (reply := replies.get_nowait()) is not None and reply is not _CLOSING:
                yield reply
        raise ShuttingDown(REFUSAL)
    finally:
        reader.cancel()
        for task in list(pending):
            task.cancel()
