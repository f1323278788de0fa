"""What every inference surface does once a request is decoded: admit, queue, observe.

Both protocol surfaces (v2 tensors and the attnserve application API) call
:meth:`DataPlane.infer`, so they share one batcher per model, and one admission rule while
draining.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from service.errors import ShuttingDown
from service.repository import LoadedModel, ModelRepository


class DataPlane:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    def start_draining(self) -> None:
        """From now on new requests are refused with UNAVAILABLE; accepted ones finish."""
        self._draining = True

    def model(self, name: str, version: str = "") -> LoadedModel:
        if self._draining:
            raise ShuttingDown("server is shutting down; retry on another replica")
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
            raise ShuttingDown("server is shutting down; retry on another replica")
        return await model.batcher.submit(inputs, deadline=deadline, timeout_s=timeout_s, priority=priority)
