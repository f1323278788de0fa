"""What every inference surface does once a request is decoded: admit, queue, observe.

Both protocol surfaces (v2 tensors and the attnserve application API) call
:meth:`DataPlane.infer`, so they share one batcher per model, and one admission rule while
the server shuts down. Shutdown goes through three states, driven by ``service.app``:

- *withdrawn*: readiness reports false (health NOT_SERVING, ServerReady false) but requests
  are served as usual: the quiet period, while load balancers stop sending;
- *draining*: new requests are refused with ShuttingDown (UNAVAILABLE) before any work, the
  accepted ones finish; :meth:`idle_for` tells when callers have stopped coming;
- *closed*: open streams are told to end (with UNAVAILABLE) before grpc stops the server, so
  no stream is cut off with CANCELLED.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, NoReturn

import numpy as np

from service.errors import ShuttingDown
from service.repository import LoadedModel, ModelRepository

REFUSAL = "server is shutting down; retry on another replica"


class DataPlane:
    def __init__(self, repository: ModelRepository, clock: Callable[[], float] = time.monotonic) -> None:
        self.repository = repository
        self._clock = clock
        self._withdrawn = False
        self._draining = False
        self._closed = False
        self._last_activity = 0.0  # while draining: when a request was last answered or refused
        self._streams: set[Callable[[], None]] = set()

    @property
    def withdrawn(self) -> bool:
        """True once shutdown began: readiness is false from then on."""
        return self._withdrawn

    @property
    def draining(self) -> bool:
        """True once new requests are refused."""
        return self._draining

    def withdraw(self) -> None:
        """Report not ready from now on, and keep serving."""
        self._withdrawn = True

    def start_draining(self) -> None:
        """From now on new requests are refused with UNAVAILABLE; accepted ones finish."""
        self._withdrawn = self._draining = True
        self._last_activity = self._clock()

    def refuse(self) -> NoReturn:
        """Refuse a request because the server drains (counted as activity, see idle_for)."""
        self._last_activity = self._clock()
        raise ShuttingDown(REFUSAL)

    def idle_for(self) -> float:
        """Seconds since a request was last answered or refused while draining (0 before)."""
        return self._clock() - self._last_activity if self._draining else 0.0

    def model(self, name: str, version: str = "") -> LoadedModel:
        if self._draining:
            self.refuse()
        return self.repository.get(name, version)

    async def infer(
        self,
        model: LoadedModel,
        inputs: Mapping[str, np.ndarray],
        *,
        deadline: float | None = None,
        timeout_s: float | None = None,
        priority: int | None = None,
    ) -> dict[str, np.ndarray]:
        if self._draining:
            self.refuse()
        try:
            return await model.batcher.submit(inputs, deadline=deadline, timeout_s=timeout_s, priority=priority)
        finally:
            if self._draining:  # one flag test per request while serving; the clock only when draining
                self._last_activity = self._clock()

    # -- streams ----------------------------------------------------------------------------
    @contextmanager
    def stream_open(self, end: Callable[[], None]) -> Iterator[None]:
        """Around a stream's life: ``end`` is called once when the server closes (at once if it
        has already), so the stream can answer what it accepted and end with UNAVAILABLE."""
        if self._closed:
            end()
            yield
            return
        self._streams.add(end)
        try:
            yield
        finally:
            self._streams.discard(end)

    def close_streams(self) -> None:
        """Tell every open stream to end; called after the drain, before grpc stops."""
        self._closed = True
        for end in list(self._streams):
            end()
        self._streams.clear()
