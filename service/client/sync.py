"""Blocking client for both surfaces: the attnserve API and the v2 (KServe / Triton) protocol.

    with Client("127.0.0.1:8001") as client:
        print(client.classify(["digit.png"]).items[0].top)
        grid = client.generate(8, classes=3, seed=42)
        print(client.encode(["hello"]).items[0].labels)

Every unary call takes ``timeout`` (seconds for the whole call, retries included; default the
client's), and is retried on UNAVAILABLE with back-off (see connection.py). Failures raise
:class:`ClientError` with the status name and the server's message.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from service.client import requests as rq
from service.client import types as t
from service.client.base import UNSET, ClientBase, stream_reply
from service.client.connection import ClientError, Deadline, should_retry
from service.proto.inference import grpc_service_pb2 as v2


class Client(ClientBase):
    _grpc = grpc

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- attnserve API -----------------------------------------------------------------------
    def classify(
        self, images: Iterable[rq.ImageLike], *, top_k: int = 0, channel_weights: bool = False,
        model: str = "", version: str = "", timeout: float | None = UNSET, spatial_attention: bool = False,
        transform: bool = False, attention: rq.Attention = None,
    ) -> t.ClassifyResult:
        """``spatial_attention`` (CBAM maps), ``transform`` (STN theta and crop) and
        ``attention`` (local-attention windows of (y, x) pixels, or "all") need models that have them."""
        request = rq.classify_request(images, model=model, version=version, top_k=top_k, channel_weights=channel_weights,
                                      spatial_attention=spatial_attention, transform=transform, attention=attention)
        return t.classify_result(self._unary(self._api.Classify, request, timeout))

    def generate(
        self, count: int = 1, *, classes: int | str | Sequence[int | str] | None = None, seed: int | None = None,
        truncation: float = 0.0, attention: rq.Attention = None, model: str = "", version: str = "",
        timeout: float | None = UNSET,
    ) -> t.Generation:
        request = rq.generate_request(count, classes=classes, seed=seed, truncation=truncation,
                                      attention=attention, model=model, version=version)
        return t.generation(self._unary(self._api.Generate, request, timeout))

    def encode(
        self, sequences: Iterable[rq.SequenceLike], *, top_k: int = 0, attention: bool = False,
        model: str = "", version: str = "", timeout: float | None = UNSET,
        sources: Iterable[rq.SequenceLike] = (),
    ) -> t.EncodeResult:
        """``sources``: a pair model's source sequences, one per sequence."""
        request = rq.encode_request(sequences, model=model, version=version, top_k=top_k, attention=attention,
                                    sources=sources)
        return t.encode_result(self._unary(self._api.Encode, request, timeout))

    def classify_stream(
        self, batches: Iterable[Iterable[rq.ImageLike]], *, top_k: int = 0, channel_weights: bool = False,
        model: str = "", version: str = "", timeout: float | None = UNSET,
    ) -> Iterator[t.StreamReply[t.ClassifyResult]]:
        """One request per batch of images; replies in completion order (see ``index``)."""
        requests = (
            rq.classify_request(b, model=model, version=version, top_k=top_k, channel_weights=channel_weights,
                                request_id=str(i))
            for i, b in enumerate(batches)
        )
        return self._stream(self._api.ClassifyStream, requests, t.classify_result, timeout)

    def encode_stream(
        self, batches: Iterable[Iterable[rq.SequenceLike]], *, top_k: int = 0, attention: bool = False,
        model: str = "", version: str = "", timeout: float | None = UNSET,
    ) -> Iterator[t.StreamReply[t.EncodeResult]]:
        requests = (
            rq.encode_request(b, model=model, version=version, top_k=top_k, attention=attention, request_id=str(i))
            for i, b in enumerate(batches)
        )
        return self._stream(self._api.EncodeStream, requests, t.encode_result, timeout)

    # -- v2 surface and health ---------------------------------------------------------------
    def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], *, outputs: Sequence[str] = (), version: str = "",
        timeout: float | None = UNSET,
    ) -> dict[str, np.ndarray]:
        reply = self._unary(self._v2.ModelInfer, rq.infer_request(model, inputs, outputs, version), timeout)
        return rq.infer_outputs(reply)

    def ready(self, model: str = "", version: str = "", *, timeout: float | None = UNSET) -> bool:
        if model:
            return self._unary(self._v2.ModelReady, v2.ModelReadyRequest(name=model, version=version), timeout).ready
        return self._unary(self._v2.ServerReady, v2.ServerReadyRequest(), timeout).ready

    def models(self, *, timeout: float | None = UNSET) -> list[dict[str, str]]:
        reply = self._unary(self._v2.RepositoryIndex, v2.RepositoryIndexRequest(), timeout)
        return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in reply.models]

    def tensors(self, model: str, version: str = "", *, timeout: float | None = UNSET) -> dict[str, dict[str, list[int]]]:
        """The model's ``inputs`` and ``outputs``: name -> shape (-1 for the batch and variable dims)."""
        reply = self._unary(self._v2.ModelMetadata, v2.ModelMetadataRequest(name=model, version=version), timeout)
        return {"inputs": {t.name: list(t.shape) for t in reply.inputs},
                "outputs": {t.name: list(t.shape) for t in reply.outputs}}

    def health(self, service: str = "", *, timeout: float | None = UNSET) -> str:
        reply = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # -- plumbing ----------------------------------------------------------------------------
    def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        deadline = Deadline(self._call_timeout(timeout))
        pauses = self._retry.backoffs()
        while True:
            try:
                return method(request, timeout=deadline.remaining(), metadata=self._metadata)
            except grpc.RpcError as error:
                pause = next(pauses, None)
                if not should_retry(error, deadline, pause):
                    raise ClientError.from_rpc(error) from None
            time.sleep(pause)  # type: ignore[arg-type]

    def _stream(
        self, method: Callable[..., Any], requests: Iterator[Any], convert: Callable[[Any], Any],
        timeout: float | None,
    ) -> Iterator[t.StreamReply[Any]]:
        # Request building (file reads, PNG encoding) happens on grpc's sending thread; an error
        # there would be swallowed as a CANCELLED stream, so it is caught and re-raised here.
        failure: list[BaseException] = []
        lock = threading.Lock()

        def guarded() -> Iterator[Any]:
            try:
                yield from requests
            except BaseException as exc:
                with lock:
                    failure.append(exc)
                raise

        call = method(guarded(), timeout=self._call_timeout(timeout), metadata=self._metadata)
        try:
            for reply in call:
                yield stream_reply(reply, convert)
        except grpc.RpcError as error:
            with lock:
                if failure:
                    raise failure[0] from None
            raise ClientError.from_rpc(error) from None
        finally:
            call.cancel()
