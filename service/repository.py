"""The model repository: name/version -> loaded model; load, warm up, unload, ready.

Layout (Triton's): ``<root>/<model>/config.pbtxt`` and ``<root>/<model>/<version>/model.onnx``.
A model is READY only after its sessions exist, its config matched the ONNX graph and every
``model_warmup`` sample ran. A model that fails to load is UNAVAILABLE with a reason; the
others keep serving, and RepositoryModelLoad retries it once the files are fixed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from service.batching.batcher import DynamicBatcher
from service.errors import AttnServeError, InternalError, ModelLoadError, ModelNotFound, ModelNotReady
from service.model_config import ModelSpec, read_config, to_spec
from service.proto.inference import model_config_pb2 as mc
from service.validation import check_against_graph, warmup_inputs

log = logging.getLogger(__name__)


class ModelState(str, enum.Enum):
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"


class Runner(Protocol):
    async def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def close(self) -> None: ...


class Telemetry(Protocol):
    """What the repository needs from service.metrics for one model/version."""

    def loaded(self, duration_s: float) -> None: ...
    def ready(self, is_ready: bool) -> None: ...


# (model file, spec, telemetry) -> runner; built by the composition root from settings.
RunnerFactory = Callable[[Path, ModelSpec, object], Runner]
TelemetryFactory = Callable[[str, str], Telemetry]


@dataclass
class LoadedModel:
    name: str
    version: str
    spec: ModelSpec
    config: mc.ModelConfig
    directory: Path
    runner: Runner
    batcher: DynamicBatcher
    telemetry: Telemetry


@dataclass
class ModelEntry:
    name: str
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""
    versions: dict[str, LoadedModel] | None = None


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


class ModelRepository:
    def __init__(
        self,
        root: Path,
        *,
        runner_factory: RunnerFactory,
        telemetry_factory: TelemetryFactory,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self._root = root
        self._runner_factory = runner_factory
        self._telemetry_factory = telemetry_factory
        self._drain_timeout_s = drain_timeout_s
        self._entries: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- queries (cheap, on the request path) -------------------------------------------
    def get(self, name: str, version: str = "") -> LoadedModel:
        entry = self._entries.get(name)
        if entry is None:
            if not self._has_folder(name):
                raise ModelNotFound(f"unknown model {_shorten(name)!r}")
            raise ModelNotReady(f"model {name!r} is not loaded")
        if entry.state is not ModelState.READY or not entry.versions:
            reason = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(f"model {name!r} is {entry.state.value}{reason}")
        if not version:
            return entry.versions[max(entry.versions, key=int)]
        loaded = entry.versions.get(version)
        if loaded is None:
            raise ModelNotFound(
                f"model {name!r} has no ready version {version!r} (ready: {sorted(entry.versions, key=int)})"
            )
        return loaded

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
            return True
        except AttnServeError:
            return False

    def ready_models(self) -> list[LoadedModel]:
        return [m for e in self._entries.values() if e.state is ModelState.READY for m in (e.versions or {}).values()]

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        names = sorted(set(self._entries) | set(self.available_names()))
        rows = []
        for name in names:
            entry = self._entries.get(name, ModelEntry(name))
            versions = sorted(entry.versions or {}, key=int) or [""]
            for v in versions:
                if ready_only and entry.state is not ModelState.READY:
                    continue
                rows.append(IndexEntry(name, v, entry.state.value, entry.reason))
        return rows

    def available_names(self) -> list[str]:
        if not self._root.is_dir():
            return []
        return sorted(p.name for p in self._root.iterdir() if (p / "config.pbtxt").is_file())

    # -- lifecycle ------------------------------------------------------------------------
    async def load_all(self, names: tuple[str, ...] = ()) -> None:
        wanted = list(names) or self.available_names()
        # One at a time: session creation and warm-up use every core already.
        for name in wanted:
            try:
                await self.load(name)
            except AttnServeError:
                pass  # already logged and recorded as the model's reason

    async def load(self, name: str) -> None:
        """(Re)load every version the model's policy selects; replaces a loaded model."""
        # Checked before an entry (and a lock) exists, so a load of a name that is not in the
        # repository leaves no trace in the index, and a name is one folder of the repository.
        if name not in self._entries and name not in self.available_names():
            raise ModelNotFound(f"unknown model {_shorten(name)!r}")
        async with self._lock(name):
            previous = self._entries.get(name)
            entry = ModelEntry(name, ModelState.LOADING)
            self._entries[name] = entry
            try:
                versions = await self._load_versions(name)
            except AttnServeError as exc:
                entry.state, entry.reason = ModelState.UNAVAILABLE, exc.message
                log.error("model %s failed to load: %s", name, exc.message)
                self._report_not_ready(name)
                if previous and previous.versions:
                    await self._retire(previous)
                raise
            if previous and previous.versions:
                await self._retire(previous)
            entry.versions, entry.state, entry.reason = versions, ModelState.READY, ""
            for loaded in versions.values():
                loaded.telemetry.ready(True)
            log.info("model %s ready (versions %s)", name, ", ".join(sorted(versions, key=int)))

    async def unload(self, name: str) -> None:
        async with self._lock(name):
            entry = self._entries.get(name)
            if entry is None:
                if name not in self.available_names():
                    raise ModelNotFound(f"unknown model {_shorten(name)!r}")
                return
            entry.state = ModelState.UNLOADING
            await self._retire(entry)
            entry.versions, entry.state, entry.reason = None, ModelState.UNAVAILABLE, "unloaded"
            log.info("model %s unloaded", name)

    async def close(self) -> None:
        """Drain every batcher (accepted requests finish), then free the sessions."""
        entries = [e for e in self._entries.values() if e.versions]
        await asyncio.gather(*(self._retire(e) for e in entries))

    # -- internals ------------------------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _has_folder(self, name: str) -> bool:
        """Whether ``name`` is a model folder of the repository. A client's name is never used
        as a path unless it is one plain folder name: no separators, no '..', not too long."""
        if not name or len(name.encode("utf-8", "replace")) > 255 or name in (".", ".."):
            return False
        if any(c in name for c in "/\\\0"):
            return False
        try:
            return (self._root / name / "config.pbtxt").is_file()
        except (OSError, ValueError):
            return False

    def _report_not_ready(self, name: str) -> None:
        """A failed load reads attnserve_model_ready 0 for each version folder on disk, even when
        config.pbtxt did not parse, so the alert on that gauge fires for it."""
        directory = self._root / name
        for path in directory.iterdir() if directory.is_dir() else ():
            if path.is_dir() and path.name.isdigit():
                self._telemetry_factory(name, str(int(path.name))).ready(False)

    async def _load_versions(self, name: str) -> dict[str, LoadedModel]:
        directory = self._root / name
        if not directory.is_dir():
            raise ModelNotFound(f"unknown model {name!r}")
        config = read_config(directory)
        spec = to_spec(config)
        versions = _select_versions(directory, spec, config.default_model_filename or "model.onnx")
        loaded: dict[str, LoadedModel] = {}
        try:
            for version, path in versions.items():
                loaded[version] = await self._load_version(directory, version, path, config, spec)
        except BaseException:
            for m in loaded.values():
                await m.batcher.stop(0)
                m.runner.close()
            raise
        return loaded

    async def _load_version(
        self, directory: Path, version: str, path: Path, config: mc.ModelConfig, spec: ModelSpec
    ) -> LoadedModel:
        started = time.perf_counter()
        telemetry = self._telemetry_factory(spec.name, version)
        # Creating sessions and warming up are CPU-bound: keep them off the event loop so
        # health checks and other models keep answering while this model loads.
        runner = await asyncio.to_thread(self._runner_factory, path, spec, telemetry)
        try:
            check_against_graph(spec, runner)
            for sample in spec.warmup:
                try:
                    await runner.run(warmup_inputs(sample))
                except InternalError as exc:  # the runner logged the cause; the reason names the sample
                    raise ModelLoadError(
                        f"model {spec.name!r} version {version}: warm-up {sample.name!r} "
                        f"(batch size {sample.batch_size}) failed: {exc.message}; details in the server log"
                    ) from exc
        except AttnServeError:
            runner.close()
            raise
        except Exception as exc:
            runner.close()
            raise ModelLoadError(f"model {spec.name!r} version {version}: warm-up failed ({exc})") from exc
        batcher = DynamicBatcher(spec.name, spec.policy, runner.run, observer=telemetry)
        batcher.start()
        telemetry.loaded(time.perf_counter() - started)
        return LoadedModel(spec.name, version, spec, config, directory, runner, batcher, telemetry)

    async def _retire(self, entry: ModelEntry) -> None:
        for loaded in (entry.versions or {}).values():
            loaded.telemetry.ready(False)
            await loaded.batcher.stop(self._drain_timeout_s)
            await asyncio.to_thread(loaded.runner.close)  # waits for runs still in flight


def _shorten(name: str, limit: int = 80) -> str:
    """A client's name as it may appear in an error message: bounded."""
    return name if len(name) <= limit else name[:limit] + "..."


def _select_versions(directory: Path, spec: ModelSpec, filename: str) -> dict[str, Path]:
    """Version folders (integers) holding the model file, filtered by the version policy."""
    found = {
        int(p.name): p / filename
        for p in directory.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / filename).is_file()
    }
    if not found:
        raise ModelLoadError(f"model {spec.name!r}: no version folder with {filename} in {directory}")
    if spec.version_policy == "all":
        chosen = sorted(found)
    elif spec.version_policy == "specific":
        missing = [v for v in spec.version_policy_values if v not in found]
        if missing:
            raise ModelLoadError(f"model {spec.name!r}: versions {missing} not found in {directory}")
        chosen = sorted(spec.version_policy_values)
    else:
        chosen = sorted(found)[-spec.version_policy_values[0]:]
    return {str(v): found[v] for v in chosen}
