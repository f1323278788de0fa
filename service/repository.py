"""The model repository: name/version -> loaded model; load beside, swap, drain, unload.

Layout (Triton's): ``<root>/<model>/config.pbtxt`` and ``<root>/<model>/<version>/model.onnx``.
A version is READY only after its sessions exist, its config matched the ONNX graph and every
``model_warmup`` sample ran.

A (re)load never takes a serving model away first. The versions its ``version_policy`` picks
are compared with what serves: a version whose files and config are unchanged keeps its
instance; the others are loaded and warmed up *beside* the serving ones. Only when all of them
are ready does the model's serving set change, in one assignment that request handlers see
whole (they read it without a lock, on the event loop). Instances that left the set stop
taking requests, finish what their batchers hold, and then free their sessions. A load that
fails changes nothing that serves: the old instances keep answering and the reason goes to
the log and to RepositoryIndex. A model that fails with nothing serving is UNAVAILABLE with a
reason, the others keep serving, and a later load retries it once its files are fixed.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np

from service.batching.batcher import DynamicBatcher
from service.errors import AttnServeError, InternalError, ModelLoadError, ModelNotFound, ModelNotReady
from service.model_config import CONFIG_FILE, ModelSpec, read_config, to_spec
from service.proto.inference import model_config_pb2 as mc
from service.validation import check_against_graph, warmup_inputs

log = logging.getLogger(__name__)

# Side files (labels, tokenizer) are compared by content up to this size, by size and mtime above.
_HASHED_SIDE_FILE_BYTES = 4 * 1024 * 1024


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


@dataclass(frozen=True)
class Source:
    """What one version instance was built from. Equal sources need no reload."""

    config: bytes  # the ModelConfig it was loaded with (config.pbtxt or an override), serialized
    side_files: tuple  # (name, fingerprint) of the files beside config.pbtxt
    files: tuple  # (path, size, mtime_ns, inode) of every file in the version folder


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
    source: Source | None = None


@dataclass
class VersionStatus:
    state: ModelState
    reason: str = ""


@dataclass
class ModelEntry:
    name: str
    # Replaced whole, never changed in place: request handlers read it without a lock.
    serving: dict[str, LoadedModel] = field(default_factory=dict)
    # What RepositoryIndex shows per version: serving, loading, failed, draining, unloaded.
    versions: dict[str, VersionStatus] = field(default_factory=dict)
    state: ModelState = ModelState.UNAVAILABLE  # of the model while nothing serves
    reason: str = ""  # why nothing serves, or why the last load failed


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True)
class _Plan:
    """What a load would serve: the config, its spec, and each selected version's file."""

    config: mc.ModelConfig
    spec: ModelSpec
    versions: dict[str, tuple[Path, Source]]


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
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def root(self) -> Path:
        return self._root

    # -- queries (cheap, on the request path) -------------------------------------------
    def get(self, name: str, version: str = "") -> LoadedModel:
        entry = self._entries.get(name)
        if entry is None:
            if not self._has_folder(name):
                raise ModelNotFound(f"unknown model {_shorten(name)!r}")
            raise ModelNotReady(f"model {name!r} is not loaded")
        serving = entry.serving
        if not serving:
            reason = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(f"model {name!r} is {entry.state.value}{reason}")
        if not version:
            return serving[max(serving, key=int)]  # Triton: the highest-numbered ready version
        loaded = serving.get(version)
        if loaded is None:
            raise ModelNotFound(
                f"model {name!r} has no ready version {_shorten(version)!r} (ready: {sorted(serving, key=int)})"
            )
        return loaded

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
            return True
        except AttnServeError:
            return False

    def ready_models(self) -> list[LoadedModel]:
        return [m for e in self._entries.values() for m in e.serving.values()]

    def model_readiness(self) -> list[tuple[str, bool]]:
        """(name, serves at least one version) for every model known or on disk."""
        names = sorted(set(self._entries) | set(self.available_names()))
        return [(name, bool(self._entries.get(name, ModelEntry(name)).serving)) for name in names]

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """One row per version the model has shown (serving, loading, failed, unloaded), or one
        row without a version for a model that never got as far as its versions."""
        rows = []
        for name in sorted(set(self._entries) | set(self.available_names())):
            entry = self._entries.get(name, ModelEntry(name))
            if not entry.versions:
                if not ready_only:
                    rows.append(IndexEntry(name, "", entry.state.value, entry.reason))
                continue
            for version in sorted(entry.versions, key=int):
                status = entry.versions[version]
                if ready_only and status.state is not ModelState.READY:
                    continue
                rows.append(IndexEntry(name, version, status.state.value, status.reason))
        return rows

    def available_names(self) -> list[str]:
        if not self._root.is_dir():
            return []
        return sorted(p.name for p in self._root.iterdir() if (p / CONFIG_FILE).is_file())

    def known_names(self) -> list[str]:
        """Models the repository holds state for (loaded, failed or unloaded)."""
        return sorted(self._entries)

    # -- lifecycle ------------------------------------------------------------------------
    async def load_all(self, names: Iterable[str] = ()) -> None:
        wanted = list(names) or self.available_names()
        # One at a time: session creation and warm-up use every core already.
        for name in wanted:
            try:
                await self.load(name)
            except AttnServeError:
                pass  # already logged and recorded as the model's reason

    async def load(self, name: str, config: mc.ModelConfig | None = None) -> bool:
        """(Re)load the versions the model's policy selects, beside what serves, then swap.

        ``config`` replaces config.pbtxt for this load (RepositoryModelLoad's override); every
        version is then reloaded, since what it was built from changed. Returns whether what
        serves changed. Raises (and changes nothing that serves) when the load fails.
        """
        # Checked before an entry (and a lock) exists, so a load of a name that is not in the
        # repository leaves no trace in the index, and a name is one folder of the repository.
        if name not in self._entries and not self._has_folder(name, need_config=config is None):
            raise ModelNotFound(f"unknown model {_shorten(name)!r}")
        async with self._lock(name):
            entry = self._entries.setdefault(name, ModelEntry(name))
            if not entry.serving:
                entry.state = ModelState.LOADING
            try:
                plan = await asyncio.to_thread(self._plan, name, config)
            except AttnServeError as exc:
                self._failed(entry, exc.message, attempted=())
                raise
            kept = {v: m for v, m in entry.serving.items() if v in plan.versions and m.source == plan.versions[v][1]}
            fresh_versions = [v for v in plan.versions if v not in kept]
            if not fresh_versions and kept.keys() == entry.serving.keys():
                self._settle(entry)  # nothing to load: clear what an earlier failed attempt left
                return False
            for version in fresh_versions:
                if version not in entry.serving:
                    entry.versions[version] = VersionStatus(ModelState.LOADING)
            try:
                fresh = await self._load_versions(plan, fresh_versions)
            except AttnServeError as exc:
                self._failed(entry, exc.message, attempted=fresh_versions)
                raise
            self._swap(entry, {**kept, **fresh})
            log.info(
                "model %s ready (versions %s%s)", name, ", ".join(sorted(entry.serving, key=int)),
                f"; loaded {', '.join(sorted(fresh, key=int))}" if kept else "",
            )
            return True

    async def unload(self, name: str, *, forget: bool = False) -> None:
        """Stop serving every version: new requests are refused at once, requests already
        accepted finish (the batchers drain), then the sessions are freed. ``forget`` also
        drops the model from the index (its folder left the repository)."""
        async with self._lock(name):
            entry = self._entries.get(name)
            if entry is None:
                if not self._has_folder(name):
                    raise ModelNotFound(f"unknown model {_shorten(name)!r}")
                return
            retired = list(entry.serving.values())
            entry.serving = {}
            entry.state, entry.reason = ModelState.UNLOADING, "unloading"
            for loaded in retired:
                entry.versions[loaded.version] = VersionStatus(ModelState.UNLOADING, "unloading")
                loaded.telemetry.ready(False)
            await asyncio.gather(*(self._drain(m) for m in retired))
            entry.state, entry.reason = ModelState.UNAVAILABLE, "unloaded"
            for version in entry.versions:
                entry.versions[version] = VersionStatus(ModelState.UNAVAILABLE, "unloaded")
            if forget:
                del self._entries[name]
            log.info("model %s unloaded%s", name, f" (versions {', '.join(m.version for m in retired)} drained)" if retired else "")

    async def close(self) -> None:
        """Drain every batcher (accepted requests finish), then free the sessions."""
        serving = [m for e in self._entries.values() for m in e.serving.values()]
        for entry in self._entries.values():
            entry.serving = {}
        for loaded in serving:
            loaded.telemetry.ready(False)
        await asyncio.gather(*(self._drain(m) for m in serving), *list(self._retiring))

    # -- internals: planning --------------------------------------------------------------
    def _plan(self, name: str, override: mc.ModelConfig | None) -> _Plan:
        """Read (off the event loop) what a load of ``name`` would serve."""
        directory = self._root / name
        if not directory.is_dir():
            raise ModelNotFound(f"unknown model {name!r}")
        config = override if override is not None else read_config(directory)
        spec = to_spec(config)
        config_bytes = config.SerializeToString(deterministic=True)
        side = _side_files(directory)
        paths = _select_versions(directory, spec, config.default_model_filename or "model.onnx")
        return _Plan(config, spec, {v: (p, Source(config_bytes, side, folder_files(p.parent))) for v, p in paths.items()})

    # -- internals: loading ---------------------------------------------------------------
    async def _load_versions(self, plan: _Plan, versions: list[str]) -> dict[str, LoadedModel]:
        """Load each of ``versions``, or none of them: a failure closes those already loaded."""
        loaded: dict[str, LoadedModel] = {}
        try:
            for version in sorted(versions, key=int):
                path, source = plan.versions[version]
                loaded[version] = await self._load_version(path.parent.parent, version, path, plan, source)
        except BaseException:
            for m in loaded.values():
                await m.batcher.stop(0)
                await asyncio.to_thread(m.runner.close)
            raise
        return loaded

    async def _load_version(self, directory: Path, version: str, path: Path, plan: _Plan, source: Source) -> LoadedModel:
        spec = plan.spec
        started = time.perf_counter()
        telemetry = self._telemetry_factory(spec.name, version)
        # Creating sessions and warming up are CPU-bound: keep them off the event loop so
        # health checks and other models keep answering while this model loads.
        try:
            runner = await asyncio.to_thread(self._runner_factory, path, spec, telemetry)
        except AttnServeError:
            raise
        except Exception as exc:  # the runner names its own faults; anything else still fails only this load
            log.exception("model %s version %s: creating the sessions failed", spec.name, version)
            raise ModelLoadError(f"model {spec.name!r} version {version}: cannot open {path} ({exc})") from exc
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
            await asyncio.to_thread(runner.close)
            raise
        except Exception as exc:
            await asyncio.to_thread(runner.close)
            raise ModelLoadError(f"model {spec.name!r} version {version}: warm-up failed ({exc})") from exc
        batcher = DynamicBatcher(spec.name, spec.policy, runner.run, observer=telemetry)
        batcher.start()
        duration = time.perf_counter() - started
        telemetry.loaded(duration)
        log.info("model %s version %s loaded and warmed up in %.2fs", spec.name, version, duration)
        return LoadedModel(spec.name, version, spec, plan.config, directory, runner, batcher, telemetry, source)

    # -- internals: changing what serves ------------------------------------------------------
    def _swap(self, entry: ModelEntry, serving: dict[str, LoadedModel]) -> None:
        """Serve ``serving`` from now on (one assignment), and retire what left the set."""
        previous, entry.serving = entry.serving, serving
        entry.state, entry.reason = ModelState.READY, ""
        for loaded in serving.values():
            loaded.telemetry.ready(True)
        retired = [m for v, m in previous.items() if serving.get(v) is not m]
        for loaded in retired:
            if loaded.version not in serving:  # a replaced version keeps its (shared) series at 1
                loaded.telemetry.ready(False)
                entry.versions[loaded.version] = VersionStatus(ModelState.UNLOADING, "draining: not selected by the version policy")
            task = asyncio.get_running_loop().create_task(self._retire(entry, loaded))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self._settle(entry)

    def _settle(self, entry: ModelEntry) -> None:
        """Index rows after a load that succeeded (or had nothing to do): serving versions READY,
        rows of versions neither serving nor draining dropped or marked unloaded."""
        draining = {v for v, s in entry.versions.items() if s.state is ModelState.UNLOADING}
        for version in list(entry.versions):
            if version not in entry.serving and version not in draining:
                if entry.versions[version].state is ModelState.UNAVAILABLE and entry.versions[version].reason == "unloaded":
                    continue
                del entry.versions[version]
        for version in entry.serving:
            entry.versions[version] = VersionStatus(ModelState.READY)
        if entry.serving:
            entry.state, entry.reason = ModelState.READY, ""

    def _failed(self, entry: ModelEntry, message: str, attempted: Iterable[str]) -> None:
        """A load failed: what serves keeps serving; the index and the log say why."""
        entry.reason = message
        attempted = list(attempted)
        if entry.serving:
            still = ", ".join(sorted(entry.serving, key=int))
            log.error("model %s failed to load: %s; still serving version(s) %s", entry.name, message, still)
            for version in entry.serving:
                entry.versions[version] = VersionStatus(
                    ModelState.READY, f"serving the files loaded before; the last load failed: {message}"
                )
            for version in attempted:
                if version not in entry.serving:
                    entry.versions[version] = VersionStatus(ModelState.UNAVAILABLE, message)
            return
        log.error("model %s failed to load: %s", entry.name, message)
        entry.state = ModelState.UNAVAILABLE
        on_disk = _version_folders(self._root / entry.name)
        for version in set(attempted) | set(on_disk):
            entry.versions[version] = VersionStatus(ModelState.UNAVAILABLE, message)
        # attnserve_model_ready reads 0 for each version folder on disk, even when config.pbtxt
        # did not parse, so the alert on that gauge fires for it.
        for version in on_disk:
            self._telemetry_factory(entry.name, version).ready(False)

    async def _retire(self, entry: ModelEntry, loaded: LoadedModel) -> None:
        """A swapped-out instance: its batcher finishes what it holds, then it is freed."""
        await self._drain(loaded)
        status = entry.versions.get(loaded.version)
        if loaded.version not in entry.serving and status is not None and status.state is ModelState.UNLOADING:
            entry.versions[loaded.version] = VersionStatus(ModelState.UNAVAILABLE, "unloaded")
        log.info("model %s version %s: previous instance drained and unloaded", loaded.name, loaded.version)

    async def _drain(self, loaded: LoadedModel) -> None:
        await loaded.batcher.stop(self._drain_timeout_s)
        await asyncio.to_thread(loaded.runner.close)  # waits for runs still in flight

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _has_folder(self, name: str, *, need_config: bool = True) -> bool:
        """Whether ``name`` is a model folder of the repository. A client's name is never used
        as a path unless it is one plain folder name: no separators, no '..', not too long."""
        if not name or len(name.encode("utf-8", "replace")) > 255 or name in (".", ".."):
            return False
        if any(c in name for c in "/\\\0"):
            return False
        try:
            folder = self._root / name
            return (folder / CONFIG_FILE).is_file() if need_config else folder.is_dir()
        except (OSError, ValueError):
            return False


def _shorten(name: str, limit: int = 80) -> str:
    """A client's name as it may appear in an error message: bounded."""
    return name if len(name) <= limit else name[:limit] + "..."


def _version_folders(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted((str(int(p.name)) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


def folder_files(folder: Path) -> tuple:
    """(relative path, size, mtime_ns, inode) of each file under ``folder``, hidden ones (an
    exporter's temporary files) left out. Cheap: stat only, model files are never read.
    A changed model file shows as a changed size, mtime or inode (a file renamed into place)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            path = Path(dirpath) / filename
            try:
                st = path.stat()
            except OSError:
                continue
            found.append((str(path.relative_to(folder)), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(found)


def _side_files(directory: Path) -> tuple:
    """The model folder's own files other than config.pbtxt (labels, tokenizer): by content,
    so an exporter rewriting them unchanged does not reload the model."""
    found = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name == CONFIG_FILE:
            continue
        try:
            st = path.stat()
            if st.st_size <= _HASHED_SIDE_FILE_BYTES:
                found.append((path.name, hashlib.sha256(path.read_bytes()).hexdigest()))
            else:
                found.append((path.name, st.st_size, st.st_mtime_ns))
        except OSError:
            continue
    return tuple(found)


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
            raise ModelLoadError(
                f"model {spec.name!r}: version_policy specific names versions {missing}, "
                f"not found (with {filename}) in {directory}"
            )
        chosen = sorted(spec.version_policy_values)
    else:
        chosen = sorted(found)[-spec.version_policy_values[0]:]
    return {str(v): found[v] for v in chosen}
