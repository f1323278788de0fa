"""Counting each request once, with its gRPC outcome, for the model it was for."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from service.errors import InvalidInput
from service.repository import LoadedModel
from service.transport.status import status_for


@asynccontextmanager
async def observed(model: LoadedModel, surface: str) -> AsyncIterator[None]:
    """Record one request of ``model`` on ``surface`` (in-flight, outcome, latency).

    Only resolved models are counted: labelling by whatever name a client sends would let
    any client grow the metric series without bound.
    """
    telemetry = model.telemetry
    started = time.perf_counter()
    telemetry.inflight(+1)
    code = "OK"
    try:
        yield
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    except Exception as exc:
        code = status_for(exc)[0].name
        if isinstance(exc, InvalidInput):  # the batcher counts the other reasons itself
            telemetry.rejected("invalid_input")
        raise
    finally:
        telemetry.inflight(-1)
        telemetry.request_done(surface, code, time.perf_counter() - started)
