"""``inference.GRPCInferenceService``: the KServe v2 / Triton gRPC surface.

Thin by design: each handler resolves the model, decodes with :mod:`service.codec.v2`,
calls the data plane or repository, and encodes. Status codes come from
:mod:`service.transport.status`; nothing here decides policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import grpc

from service import __version__
from service.codec import v2
from service.dataplane import REFUSAL, DataPlane
from service.errors import AttnServeError, InvalidInput, ModelNotFound, ShuttingDown
from service.model_control import ModelControl
from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import grpc_service_pb2_grpc as pb_grpc
from service.transport.observe import observed
from service.transport.statistics import statistics_proto
from service.transport.status import abort_with, grpc_errors, log_if_fault, status_for

log = logging.getLogger(__name__)

SERVER_NAME = "attnserve"
EXTENSIONS = ("model_repository", "model_configuration", "schedule_policy", "statistics", "parameters")
SURFACE = "v2"
# Put in a stream's answer queue: the server drains or closes, the stream ends (UNAVAILABLE).
_ENDING = object()


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's gRPC deadline on the batcher's clock (time.monotonic)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, *, max_tensor_bytes: int, model_control: ModelControl) -> None:
        self._dataplane = dataplane
        self._repository = dataplane.repository
        self._max_tensor_bytes = max_tensor_bytes
        self._model_control = model_control  # RepositoryModelLoad/Unload, as the mode allows

    # -- health and metadata ------------------------------------------------------------
    @grpc_errors
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(self, request, context):
        ready = not self._dataplane.withdrawn and bool(self._repository.ready_models())
        return pb.ServerReadyResponse(ready=ready)

    @grpc_errors
    async def ModelReady(self, request, context):
        ready = not self._dataplane.withdrawn and self._repository.is_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @grpc_errors
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    @grpc_errors
    async def ModelMetadata(self, request, context):
        model = self._repository.get(request.name, request.version)
        spec = model.spec
        batch = [-1] if spec.max_batch_size > 0 else []
        versions = [m.version for m in self._repository.ready_models() if m.name == spec.name]
        return pb.ModelMetadataResponse(
            name=spec.name,
            versions=sorted(versions, key=int),
            platform="onnxruntime_onnx",
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=batch + list(t.dims)) for t in spec.inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=batch + list(t.dims)) for t in spec.outputs],
        )

    @grpc_errors
    async def ModelConfig(self, request, context):
        model = self._repository.get(request.name, request.version)
        return pb.ModelConfigResponse(config=model.config)

    @grpc_errors
    async def ModelStatistics(self, request, context):
        if request.name:
            models = [self._repository.get(request.name, request.version)]
        else:
            models = self._repository.ready_models()
        return pb.ModelStatisticsResponse(model_stats=[statistics_proto(m) for m in models])

    # -- inference ------------------------------------------------------------------------
    @grpc_errors
    async def ModelInfer(self, request, context):
        # Answered as bytes (see add_to_server): one copy of each output instead of three.
        return await self._infer(request, deadline_of(context), encode=v2.encode_response_bytes)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse | bytes]:
        """Each request of the stream is answered on its own as soon as it is computed, so one
        stream can fill a batch; a failed request gets an ``error_message`` and the stream goes on.

        Once the server drains, the stream takes no new request: it answers those it accepted,
        then ends with UNAVAILABLE, and so does an idle stream when the server closes. A v2
        stream answer carries no status code; UNAVAILABLE on the stream tells the client that
        the requests it got no answer for were not computed and are safe to send elsewhere."""
        # Answers are serialized ModelStreamInferResponses (bytes), errors messages; see add_to_server.
        responses: asyncio.Queue[pb.ModelStreamInferResponse | bytes | object | None] = asyncio.Queue()
        pending: set[asyncio.Task] = set()

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                result = await self._infer(request, deadline_of(context), encode=v2.encode_response_bytes)
                await responses.put(v2.stream_response_bytes(result))
            except Exception as exc:
                if isinstance(exc, ShuttingDown) and self._dataplane.draining:
                    responses.put_nowait(_ENDING)  # refused because the server drains: the stream ends
                    return
                log_if_fault(exc, "ModelStreamInfer")
                error = pb.ModelStreamInferResponse(error_message=status_for(exc)[1])
                error.infer_response.id = request.id
                error.infer_response.model_name = request.model_name
                await responses.put(error)

        async def read_all() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*list(pending))
            await responses.put(None)

        reader = asyncio.create_task(read_all())
        try:
            with self._dataplane.stream_open(lambda: responses.put_nowait(_ENDING)):
                while (item := await responses.get()) is not None and item is not _ENDING:
                    yield item
            if item is None:
                await reader
                return
            reader.cancel()  # read no more: what the client sends from now on is not accepted
            await asyncio.gather(*list(pending))  # the accepted ones; each put its answer
            while not responses.empty():
                if (item := responses.get_nowait()) is not None and item is not _ENDING:
                    yield item
            await abort_with(context, ShuttingDown(REFUSAL))
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None, *, encode=v2.encode_response):
        """One request through the data plane; ``encode`` gives the message or its bytes."""
        model = self._dataplane.model(request.model_name, request.model_version)
        with observed(model, SURFACE):
            decoded = v2.decode_request(request, model.spec, self._max_tensor_bytes)
            outputs = await self._dataplane.infer(
                model, decoded.inputs, deadline=deadline, timeout_s=decoded.timeout_s, priority=decoded.priority
            )
            return encode(request, model.name, model.version, outputs, decoded.outputs)

    # -- repository ---------------------------------------------------------------------
    @grpc_errors
    async def RepositoryIndex(self, request, context):
        _check_repository_name(request.repository_name)
        rows = self._repository.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(name=r.name, version=r.version, state=r.state, reason=r.reason) for r in rows]
        )

    @grpc_errors
    async def RepositoryModelLoad(self, request, context):
        _check_repository_name(request.repository_name)
        await self._model_control.load(request.model_name, _parameters(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(self, request, context):
        _check_repository_name(request.repository_name)
        await self._model_control.unload(request.model_name, _parameters(request.parameters))
        return pb.RepositoryModelUnloadResponse()


def _parameters(parameters) -> dict[str, object]:
    """ModelRepositoryParameter map -> plain values (bool, int, str or bytes)."""
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param") for key, value in parameters.items()}


def _check_repository_name(name: str) -> None:
    if name and name != "default":
        raise ModelNotFound(f"unknown repository {name!r}; this server has one repository")


__all__ = ["InferenceServicer", "AttnServeError"]


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """The generated registration, except that ModelInfer and ModelStreamInfer may answer with
    serialized responses (:func:`service.codec.v2.encode_response_bytes`): their response
    serializer passes bytes through and serializes a message as before."""
    captured = _Registrations()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, captured)
    handlers = dict(captured.handlers)
    infer, stream = handlers["ModelInfer"], handlers["ModelStreamInfer"]
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        infer.unary_unary, request_deserializer=infer.request_deserializer, response_serializer=v2.serialize_response
    )
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        stream.stream_stream, request_deserializer=stream.request_deserializer, response_serializer=v2.serialize_response
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(captured.name, handlers),))
    server.add_registered_method_handlers(captured.name, handlers)


class _Registrations:
    """Stands in for the server while the generated function registers, keeping its handlers."""

    name = ""
    handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.name, self.handlers = name, handlers
