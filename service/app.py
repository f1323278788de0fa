"""The composition root: settings -> metrics -> repository -> data plane -> gRPC server.

Everything is built here and injected downwards; no module below reads settings or globals.
Lifecycle: start (load + warm up models, then bind and report ready), serve until SIGTERM or
SIGINT, then drain: readiness turns false (serving on for the quiet period, if one is set), new
requests get UNAVAILABLE, everything already accepted finishes within the exit timeout, and the
process exits (see App.stop).
"""

from __future__ import annotations

import asyncio
import gc
import contextlib
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
from service.runtime import OrtRunner, default_intra_op_threads, model_provider, resolve_provider
from service.settings import Settings, check_repository
from service.transport.api import AttnServeServicer, api_limits  # attnserve API (issue 4)
from service.transport.http.api import ApiRoutes
from service.transport.http.inference import InferenceRoutes  # KServe v2 over HTTP (issue 16)
from service.transport.http.server import HttpServer, build_http_server
from service.transport.inference import InferenceServicer
from service.transport.server import build_server, set_health

log = logging.getLogger("attnserve")

# Draining is over once no request was answered or refused for this long: each client answered
# last has sent its next request by then, and was refused. Longer than a busy client's turn
# around (256 asyncio clients on one loop answer a burst in tens of milliseconds).
SETTLE_S = 0.25
# What grpc gets to write the last answers after the drain (at most a quarter of the budget).
STOP_GRACE_S = 5.0


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
        self.http_port = 0
        self.metrics_port = 0
        self._server = None
        self._http: HttpServer | None = None
        self._metrics_http = None
        self._stopped = asyncio.Event()
        self._quiet_over = asyncio.Event()  # a second SIGTERM/SIGINT cuts the quiet period short

    def _make_runner(self, path: Path, spec: ModelSpec, telemetry: object) -> OrtRunner:
        threads = self.settings.intra_op_threads or default_intra_op_threads(spec.instance_count)
        # The model's own timeout when its config sets one, else the server's; 0 = none.
        timeout = self.settings.execution_timeout_s if spec.execution_timeout_s is None else spec.execution_timeout_s
        return OrtRunner(
            path,
            provider=model_provider(self.provider, spec.instance_kind, spec.name),
            instances=spec.instance_count,
            intra_op_threads=threads,
            device_id=self.settings.device_id,
            observer=telemetry,  # type: ignore[arg-type]
            name=spec.name,
            execution_timeout_s=timeout or None,
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
        if self.settings.allow_http:  # issue 16: the same data plane, on this event loop
            routes = InferenceRoutes(
                self.dataplane, model_control=self.model_control,
                max_tensor_bytes=self.settings.effective_max_tensor_bytes,
                max_body_bytes=self.settings.max_message_bytes,
            ).routes()
            routes += ApiRoutes(api, max_body_bytes=self.settings.max_message_bytes).routes()
            self._http = build_http_server(self.settings, routes, self.dataplane)
            self.http_port = await self._http.start(self.settings.host, self.settings.http_port)
        if self.settings.allow_metrics:
            self._metrics_http = start_metrics_http(
                self.metrics, self.settings.effective_metrics_host, self.settings.metrics_port
            )
            self.metrics_port = self._metrics_http.port
        await self.model_control.start(self.settings.load_models)
        # What start-up allocated (modules, sessions, configs) lives as long as the process:
        # freezing it keeps the collector's full passes from walking it again under load.
        gc.freeze()
        await self.refresh_health()
        ready = [f"{m.name}:{m.version}" for m in self.repository.ready_models()]
        failed = [f"{r.name} ({r.reason})" for r in self.repository.index() if r.state not in ("READY", "UNLOADING") and r.reason]
        metrics = f"http://{self.settings.effective_metrics_host}:{self.metrics_port}/metrics" if self._metrics_http else "off"
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        http = f"{self._http.scheme}://{host}:{self.http_port}" if self._http else "off"
        log.info(
            "attnserve ready: grpc=%s:%d metrics=%s http=%s provider=%s models=[%s] in %.1fs%s",
            self.settings.host, self.grpc_port, metrics, http, self.provider, ", ".join(ready), time.perf_counter() - started,
            f"; NOT loaded: {'; '.join(failed)}" if failed else "",
        )

    async def refresh_health(self) -> None:
        ready = not self.dataplane.withdrawn and bool(self.repository.ready_models())
        models = self.repository.model_readiness()
        await set_health(self.health, ready=ready, models=models)

    async def stop(self) -> None:
        """Shut down without an answer a client cannot act on: every request is answered, or
        refused with UNAVAILABLE before any work (safe to send to another replica).

        1. Not ready at once (health NOT_SERVING, ServerReady false), still serving for the
           quiet period (``--drain-quiet-secs``) while load balancers stop sending.
        2. Refuse new requests, finish the accepted ones (within ``--exit-timeout-secs``).
        3. Keep refusing until callers stop coming: a client answered at the end of the drain
           sends its next request at once, and one that reached grpc after ``server.stop``
           would be cancelled by grpc itself (CANCELLED: neither done nor safe to retry).
        4. End open streams with UNAVAILABLE, then stop grpc (GOAWAY: a client's next call
           goes to another address), with a grace for the last answers still being written.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        started = time.perf_counter()
        self.dataplane.withdraw()
        await self.model_control.stop()  # no reload starts while the models drain
        await self.refresh_health()
        quiet = self.settings.drain_quiet_s
        if quiet > 0:
            log.info("not ready: serving for the %.1fs quiet period, then draining (a second signal: at once)", quiet)
            # A period of time by design: when load balancers have let go is not observable here.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._quiet_over.wait(), quiet)
        budget = self.settings.exit_timeout_s
        log.info("draining: refusing new requests, finishing accepted ones (up to %.0fs)", budget)
        deadline = time.monotonic() + budget
        self.dataplane.start_draining()
        try:
            await asyncio.wait_for(self.repository.close(), budget)
        except asyncio.TimeoutError:
            log.warning("exit timeout reached with work still queued; failing what is left")
        # The grace is kept out of the settling time, so a drain that finished exits in budget.
        grace = min(STOP_GRACE_S, budget / 4)
        await self._settle(deadline - grace)
        self.dataplane.close_streams()
        # gRPC and HTTP stop together: both have answered everything they accepted by now.
        await asyncio.gather(
            *([self._server.stop(grace=grace)] if self._server is not None else []),
            *([self._http.stop(grace)] if self._http is not None else []),
        )
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self.metrics.close()
        log.info("stopped in %.2fs", time.perf_counter() - started)

    async def _settle(self, until: float) -> None:
        """Wait until no request was answered or refused for SETTLE_S (or ``until``)."""
        while (wait := SETTLE_S - self.dataplane.idle_for()) > 0 and time.monotonic() < until:
            await asyncio.sleep(min(wait, max(until - time.monotonic(), 0.0)))

    def _signalled(self, stop_requested: asyncio.Event) -> None:
        if stop_requested.is_set():
            self._quiet_over.set()
        stop_requested.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled, stop_requested)
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
