"""The attnserve API over REST: the same three calls as ``attnserve.v1.AttnServe``, for curl.

Each route builds the protobuf request and calls the gRPC servicer's own decode -> infer ->
encode path (:class:`service.transport.api.AttnServeServicer`), so the checks, limits, batching
and metrics are those of the gRPC API. Bodies are the messages' JSON mapping (field names as in
the .proto, ``bytes`` as base64), answers too, except where a file is the natural form:

    POST /v1/classify   multipart/form-data: one or more ``image`` files (PNG/JPEG) and the
                        optional fields model, version, top_k, channel_weights, id;
                        or JSON ClassifyRequest (images base64)
    POST /v1/generate   JSON GenerateRequest (an empty body: one image, a drawn seed); with
                        ``Accept: image/png`` (or ``?format=png``) the answer is the first
                        image as PNG, its seed and class in X-Attnserve-* headers
    POST /v1/encode     JSON EncodeRequest, e.g. {"sequences": [{"text": "hello"}]}

    curl -F image=@digit.png http://localhost:8000/v1/classify
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from service.codec import v2_http
from service.errors import InvalidInput
from service.proto.attnserve.v1 import attnserve_pb2 as pb
from service.transport.api import AttnServeServicer
from service.transport.http.routing import Route, json_body, json_response

PROTOCOL = "http"
PNG = "image/png"
FORM_FIELDS = {"model", "version", "top_k", "channel_weights", "spatial_attention", "transform", "id", "image"}


class ApiRoutes:
    def __init__(self, servicer: AttnServeServicer, *, max_body_bytes: int) -> None:
        self._servicer = servicer
        self._max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("POST", ("v1", "classify"), self.classify, body=True),
            Route("POST", ("v1", "generate"), self.generate, body=True),
            Route("POST", ("v1", "encode"), self.encode, body=True),
        ]

    async def classify(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.content_type == "multipart/form-data":
            message = await self._classify_form(request)
        else:
            message = await self._message(request, pb.ClassifyRequest())
        return _answer(await self._servicer.classify(message, None, PROTOCOL))

    async def generate(self, request: web.BaseRequest) -> web.StreamResponse:
        response = await self._servicer.generate(await self._message(request, pb.GenerateRequest()), None, PROTOCOL)
        if request.query.get("format") == "png" or PNG in request.headers.get("Accept", ""):
            image = response.images[0]
            answer = web.Response(body=image.png, content_type=PNG)
            answer.headers.update({
                "X-Attnserve-Model": f"{response.model}:{response.version}",
                "X-Attnserve-Seed": str(image.seed),
                "X-Attnserve-Class": f"{image.class_id} {image.class_label}".strip(),
            })
            return answer
        return _answer(response)

    async def encode(self, request: web.BaseRequest) -> web.StreamResponse:
        return _answer(await self._servicer.encode(await self._message(request, pb.EncodeRequest()), None, PROTOCOL))

    # -- bodies -> messages ---------------------------------------------------------------
    async def _message(self, request: web.BaseRequest, message: Message) -> Any:
        document = await json_body(request, self._max_body_bytes)
        if document is None:
            return message
        if not isinstance(document, dict):
            raise InvalidInput(f"the body must be a JSON {message.DESCRIPTOR.name}")
        try:
            return json_format.ParseDict(document, message)
        except json_format.ParseError as exc:
            raise InvalidInput(f"the body is not a valid {message.DESCRIPTOR.name}: {str(exc)[:300]}") from None

    async def _classify_form(self, request: web.BaseRequest) -> pb.ClassifyRequest:
        form = await request.post()  # the body limit applies (see HttpServer's request factory)
        unknown = sorted(set(form) - FORM_FIELDS)
        if unknown:
            raise InvalidInput(f"unknown form fields {unknown}; expected {sorted(FORM_FIELDS)}")
        message = pb.ClassifyRequest(model=_text(form, "model"), version=_text(form, "version"), id=_text(form, "id"))
        for item in form.getall("image", []):
            if not isinstance(item, web.FileField):
                raise InvalidInput("each 'image' must be an uploaded file (curl -F image=@digit.png)")
            message.images.append(item.file.read())
        top_k = _text(form, "top_k")
        if top_k:
            if not top_k.isdigit():
                raise InvalidInput(f"top_k must be a whole number, got {top_k[:20]!r}")
            message.top_k = int(top_k)
        for flag in ("channel_weights", "spatial_attention", "transform"):
            setattr(message, flag, _text(form, flag).lower() in ("1", "true", "yes", "on"))
        return message


def _text(form: Any, name: str) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        raise InvalidInput(f"form field {name!r} must be text, not a file")
    return value


def _answer(message: Message) -> web.Response:
    return json_response(v2_http.message_dict(message))
