"""Assembles the grpc.aio server: servicers, health, reflection, message limits.

Health service names (grpc.health.v1):
  ""                                 ready: at least one model ready and not draining
  "inference.GRPCInferenceService"   same as ""
  "attnserve.v1.AttnServe"           same as ""
  "live"                             the process is up and serving RPCs (liveness probes)
  "<model name>"                     that model is ready
"""

from __future__ import annotations

from typing import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service.proto import pool
from service.proto.attnserve.v1 import attnserve_pb2_grpc as api_pb_grpc  # attnserve API (issue 4)
from service.proto.inference import grpc_service_pb2 as pb
from service.settings import Settings
from service.transport.api import SERVICE_NAME as API_SERVICE  # attnserve API (issue 4)
from service.transport.api import AttnServeServicer
from service.transport import auth  # issue 8
from service.transport.interceptors import MalformedMessageGuard  # issue 8
from service.transport.tls import bind  # issue 8
from service.transport.inference import InferenceServicer
from service.transport.inference import add_to_server as add_inference_service

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
LIVENESS_SERVICE = "live"


def build_server(
    settings: Settings,
    inference: InferenceServicer,
    health_servicer: health.aio.HealthServicer,
    api: AttnServeServicer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Create the server and bind it; returns it with the port actually bound (for port 0)."""
    limit = settings.max_message_bytes
    # Outermost first: a call without the token is refused before its bytes are parsed (issue 8).
    token_check = auth.from_settings(settings)
    server = grpc.aio.server(
        interceptors=[*([token_check] if token_check else []), MalformedMessageGuard()],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Let clients keep idle connections open without being dropped as abusive.
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    add_inference_service(inference, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if api is not None:  # attnserve API (issue 4)
        api_pb_grpc.add_AttnServeServicer_to_server(api, server)
    # Our stubs live in their own descriptor pool (see service/proto/pool.py), so reflection
    # is given that pool, with the health and reflection files copied into it.
    pool.adopt(health_pb2.DESCRIPTOR)
    pool.adopt(reflection_pb2.DESCRIPTOR)
    served = (INFERENCE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    served += (API_SERVICE,) if api is not None else ()  # attnserve API (issue 4)
    reflection.enable_server_reflection(
        served,
        server,
        pool=pool.POOL,
    )
    port = bind(server, settings)  # TLS when configured (issue 8)
    if port == 0:
        raise OSError(f"cannot bind gRPC address {settings.grpc_address}")
    return server, port


async def set_health(
    servicer: health.aio.HealthServicer, *, ready: bool, models: Iterable[tuple[str, bool]]
) -> None:
    status = SERVING if ready else NOT_SERVING
    await servicer.set("", status)
    await servicer.set(INFERENCE_SERVICE, status)
    await servicer.set(API_SERVICE, status)  # attnserve API (issue 4): same as ""
    await servicer.set(LIVENESS_SERVICE, SERVING)
    for name, model_ready in models:
        await servicer.set(name, SERVING if model_ready and ready else NOT_SERVING)
