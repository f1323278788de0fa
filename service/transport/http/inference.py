"""The Open Inference Protocol's REST endpoints (KServe v2, Triton's HTTP API and its extensions).

Thin like the gRPC servicer (service/transport/inference.py), and calling the same things: the
data plane for inference (so both protocols share each model's batcher and the drain states),
the repository for metadata and readiness, model control for load and unload. Bodies are
decoded and answers encoded by :mod:`service.codec.v2_http`; statuses come from
:mod:`service.transport.http.errors`.

    GET  /v2/health/live | /v2/health/ready                   200, or 503 when not ready
    GET  /v2                                                  server metadata
    GET  /v2/models/{m}[/versions/{v}]                        model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready | /config | /stats
    GET  /v2/models/stats                                     statistics of every ready model
    POST /v2/models/{m}[/versions/{v}]/infer                  JSON, or JSON + binary tensors
    POST /v2/repository/index                                 {"ready": bool} optional
    POST /v2/repository/models/{m}/load | /unload             {"parameters": {...}} optional
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service import __version__
from service.codec import v2_http
from service.dataplane import DataPlane
from service.errors import InvalidInput
from service.model_control import ModelControl
from service.repository import LoadedModel
from service.transport.http.routing import Route, empty_response, json_body, json_response, read_body, with_versions
from service.transport.inference import EXTENSIONS, SERVER_NAME, SURFACE
from service.transport.observe import observed
from service.transport.statistics import statistics_proto

PROTOCOL = "http"
MODELS = ("v2", "models", "{}")
OCTET_STREAM = "application/octet-stream"


class InferenceRoutes:
    def __init__(
        self, dataplane: DataPlane, *, model_control: ModelControl, max_tensor_bytes: int, max_body_bytes: int
    ) -> None:
        self._dataplane = dataplane
        self._repository = dataplane.repository
        self._model_control = model_control
        self._max_tensor_bytes = max_tensor_bytes
        self._max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("GET", ("v2", "health", "live"), self.live, public=True),
            Route("GET", ("v2", "health", "ready"), self.ready, public=True),
            Route("GET", ("v2",), self.server_metadata),
            Route("GET", ("v2", "models", "stats"), self.all_statistics),  # before /v2/models/{m}
            *with_versions("GET", MODELS, (), self.model_metadata),
            *with_versions("GET", MODELS, ("ready",), self.model_ready),
            *with_versions("GET", MODELS, ("config",), self.model_config),
            *with_versions("GET", MODELS, ("stats",), self.model_statistics),
            *with_versions("POST", MODELS, ("infer",), self.infer, body=True),
            Route("POST", ("v2", "repository", "index"), self.repository_index, body=True),
            Route("POST", ("v2", "repository", "models", "{}", "load"), self.load, body=True),
            Route("POST", ("v2", "repository", "models", "{}", "unload"), self.unload, body=True),
        ]

    # -- health and metadata ------------------------------------------------------------
    async def live(self, request: web.BaseRequest) -> web.StreamResponse:
        return empty_response()

    async def ready(self, request: web.BaseRequest) -> web.StreamResponse:
        ready = not self._dataplane.withdrawn and bool(self._repository.ready_models())
        return empty_response(200 if ready else 503)

    async def server_metadata(self, request: web.BaseRequest) -> web.StreamResponse:
        return json_response({"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})

    async def model_metadata(self, request: web.BaseRequest, name: str, version: str) -> web.StreamResponse:
        spec = self._repository.get(name, version).spec
        batch = [-1] if spec.max_batch_size > 0 else []
        versions = sorted((m.version for m in self._repository.ready_models() if m.name == spec.name), key=int)

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": batch + list(t.dims)} for t in specs]

        return json_response({
            "name": spec.name, "versions": versions, "platform": "onnxruntime_onnx",
            "inputs": tensors(spec.inputs), "outputs": tensors(spec.outputs),
        })

    async def model_ready(self, request: web.BaseRequest, name: str, version: str) -> web.StreamResponse:
        ready = not self._dataplane.withdrawn and self._repository.is_ready(name, version)
        return empty_response(200 if ready else 503)

    async def model_config(self, request: web.BaseRequest, name: str, version: str) -> web.StreamResponse:
        return json_response(v2_http.message_dict(self._repository.get(name, version).config))

    async def model_statistics(self, request: web.BaseRequest, name: str, version: str) -> web.StreamResponse:
        return self._statistics([self._repository.get(name, version)])

    async def all_statistics(self, request: web.BaseRequest) -> web.StreamResponse:
        return self._statistics(self._repository.ready_models())

    @staticmethod
    def _statistics(models: list[LoadedModel]) -> web.StreamResponse:
        return json_response({"model_stats": [v2_http.message_dict(statistics_proto(m)) for m in models]})

    # -- inference ------------------------------------------------------------------------
    async def infer(self, request: web.BaseRequest, name: str, version: str) -> web.StreamResponse:
        model = self._dataplane.model(name, version)  # refused before the body is read while draining
        header_length = _header_length(request)
        body = await read_body(request, self._max_body_bytes)
        with observed(model, SURFACE, PROTOCOL):
            decoded = v2_http.decode_request(body, header_length, model.spec, self._max_tensor_bytes)
            d = decoded.decoded
            outputs = await self._dataplane.infer(model, d.inputs, timeout_s=d.timeout_s, priority=d.priority)
            answer, json_length = v2_http.encode_response(
                model.name, model.version, decoded.id, outputs, d.outputs, decoded.binary_outputs
            )
        if json_length is None:
            return web.Response(body=answer, content_type="application/json")
        response = web.Response(body=answer, content_type=OCTET_STREAM)
        response.headers[v2_http.HEADER_LENGTH] = str(json_length)
        return response

    # -- repository ---------------------------------------------------------------------
    async def repository_index(self, request: web.BaseRequest) -> web.StreamResponse:
        document = await json_body(request, self._max_body_bytes) or {}
        ready = document.get("ready", False) if isinstance(document, dict) else None
        if not isinstance(ready, bool):
            raise InvalidInput("the index request must be a JSON object whose 'ready' is true or false")
        rows = self._repository.index(ready_only=ready)
        return json_response([{"name": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in rows])

    async def load(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        await self._model_control.load(name, await self._parameters(request))
        return empty_response()

    async def unload(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        await self._model_control.unload(name, await self._parameters(request))
        return empty_response()

    async def _parameters(self, request: web.BaseRequest) -> dict[str, object]:
        """Triton's load/unload body: {"parameters": {"config": "<JSON ModelConfig>", ...}}."""
        document = await json_body(request, self._max_body_bytes) or {}
        parameters = document.get("parameters", {}) if isinstance(document, dict) else None
        if not isinstance(parameters, dict):
            raise InvalidInput("the body must be a JSON object whose 'parameters' is an object")
        return parameters


def _header_length(request: web.BaseRequest) -> int | None:
    raw = request.headers.get(v2_http.HEADER_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{v2_http.HEADER_LENGTH} must be a byte count, got {raw[:40]!r}") from None
