"""The composition root: settings -> metrics -> repository -> data plane -> gRPC server.

Everything is built here and injected downwards; no module below reads settings or globals.
Lifecycle: start (load + warm up models, then bind and report ready), serve until SIGTERM or
SIGINT, then drain: readiness turns false, new requests get UNAVAILABLE, everything already
accepted finishes within the exit timeout, and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

from grpc_health.v1 import health
from prometheus_client import CollectorRegistry

from service import eventloop
from service.dataplane import DataPlane
from service.metrics import GpuSampler, Metrics, start_metrics_http
from service.model_config import ModelSpec
from service.model_control import ModelControl
from service.repository import ModelRepository
from service.runtime import OrtRunner, default_intra_op_threads, resolve_provider
from service.settings import Settings, check_repository
from service.transport.api import AttnServeServicer, api_limits  # attnserve API (issue 4)
from service.transport.inference import InferenceServicer
from service.transport.server import build_server, set_health

log = logging.getLogger("attnserve")


class App:
    """One server process. ``start``/``stop`` are separate so tests can drive the lifecycle."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics(registry or CollectorRegistry(), gpu=GpuSampler.open())
        # Resolved once, so the CPU fallback is one log line, not one per model.
        self.provider = resolve_provider(settings.provider)
        self.repository = ModelRepository(
            settings.model_repository,
            runner_factory=self._make_runner,
            telemetry_factory=self.metrics.model,
            drain_timeout_s=settings.exit_timeout_s,
        )
        self.dataplane = DataPlane(self.repository)
        self.model_control = ModelControl(  # issue 18: --model-control-mode
            self.repository,
            mode=settings.model_control_mode,
            poll_interval_s=settings.repository_poll_s,
            on_change=self.refresh_health,
        )
        self.health = health.aio.HealthServicer()
        self.grpc_port = 0
        self.metrics_port = 0
        self._server = None
        self._metrics_http = None
        self._stopped = asyncio.Event()

    def _make_runner(self, path: Path, spec: ModelSpec, telemetry: object) -> OrtRunner:
        threads = self.settings.intra_op_threads or default_intra_op_threads(spec.instance_count)
        return OrtRunner(
            path,
            provider=self.provider,
            instances=spec.instance_count,
            intra_op_threads=threads,
            device_id=self.settings.device_id,
            observer=telemetry,  # type: ignore[arg-type]
            name=spec.name,
        )

    async def start(self) -> None:
        check_repository(self.settings)
        started = time.perf_counter()
        inference = InferenceServicer(
            self.dataplane,
            max_tensor_bytes=self.settings.effective_max_tensor_bytes,
            model_control=self.model_control,
        )
        api = AttnServeServicer(self.dataplane, api_limits(self.settings))  # attnserve API (issue 4)
        self._server, self.grpc_port = build_server(self.settings, inference, self.health, api)
        await self.refresh_health()  # NOT_SERVING until models are ready
        # Bind first so liveness probes answer while models load, then load and warm up.
        await self._server.start()
        if self.settings.allow_metrics:
            self._metrics_http = start_metrics_http(
                self.metrics, self.settings.effective_metrics_host, self.settings.metrics_port
            )
            self.metrics_port = self._metrics_http.port
        await self.model_control.start(self.settings.load_models)
        await self.refresh_health()
        ready = [f"{m.name}:{m.version}" for m in self.repository.ready_models()]
        failed = [f"{r.name} ({r.reason})" for r in self.repository.index() if r.state not in ("READY", "UNLOADING") and r.reason]
        metrics = f"http://{self.settings.effective_metrics_host}:{self.metrics_port}/metrics" if self._metrics_http else "off"
        log.info(
            "attnserve ready: grpc=%s:%d metrics=%s provider=%s models=[%s] in %.1fs%s",
            self.settings.host, self.grpc_port, metrics, self.provider, ", ".join(ready), time.perf_counter() - started,
            f"; NOT loaded: {'; '.join(failed)}" if failed else "",
        )

    async def refresh_health(self) -> None:
        ready = not self.dataplane.draining and bool(self.repository.ready_models())
        models = self.repository.model_readiness()
        await set_health(self.health, ready=ready, models=models)

    async def stop(self) -> None:
        """Drain and stop; everything accepted before this call is answered."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        started = time.perf_counter()
        log.info("draining: refusing new requests, finishing accepted ones (up to %.0fs)", self.settings.exit_timeout_s)
        self.dataplane.start_draining()
        await self.model_control.stop()  # no reload starts while the models drain
        await self.refresh_health()
        try:
            await asyncio.wait_for(self.repository.close(), self.settings.exit_timeout_s)
        except asyncio.TimeoutError:
            log.warning("exit timeout reached with work still queued; failing what is left")
        if self._server is not None:
            # Responses of the last batches are still being written: give them a short grace.
            await self._server.stop(grace=min(5.0, self.settings.exit_timeout_s))
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self.metrics.close()
        log.info("stopped in %.2fs", time.perf_counter() - started)

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await self.start()
        await stop_requested.wait()
        await self.stop()


def run(settings: Settings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    eventloop.run(App(settings).serve_forever(), settings.event_loop)
    return 0
