"""Model control, as Triton's ``--model-control-mode``: what loads at start, whether the
load/unload RPCs are served, and the repository poller.

- ``none``: every model in the repository loads at start; the repository is never read again,
  and RepositoryModelLoad/Unload are refused with UNAVAILABLE (Triton's code and wording).
- ``explicit`` (attnserve's default): the ``--load-model`` models load at start (none given,
  or ``*``: every model; Triton loads none without the flag, attnserve keeps its behaviour
  from before the flag existed); RepositoryModelLoad/Unload load, reload and unload.
- ``poll``: every model loads at start, then the repository is rescanned every
  ``--repository-poll-secs``: a model folder that appeared is loaded, one that disappeared is
  unloaded, and one whose files changed (a new version folder, config.pbtxt, a model file, a
  side file) is reloaded. The load/unload RPCs are refused, as in Triton.

Every reload goes through :meth:`ModelRepository.load`: new instances are loaded and warmed up
beside the serving ones and swapped in; the old ones drain. A scan only stats files: a model
whose files did not change since the last attempt is not touched (and a broken one is not
retried until its files change again).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Awaitable, Callable, Mapping

from service.errors import AttnServeError, InvalidInput, ModelControlDisabled
from service.model_config import CONFIG_FILE, config_from_json
from service.repository import ModelRepository, folder_files

log = logging.getLogger(__name__)

NONE, POLL, EXPLICIT = "none", "poll", "explicit"
CONFIG_PARAMETER = "config"  # Triton's: a JSON ModelConfig replacing config.pbtxt for the load
# Parameters Triton's clients send on unload; attnserve has no ensembles, so no dependents.
UNLOAD_PARAMETERS = ("unload_dependents",)

Fingerprint = tuple  # (relative path, size, mtime_ns, inode) of each file of a model folder


class ModelControl:
    def __init__(
        self,
        repository: ModelRepository,
        *,
        mode: str = EXPLICIT,
        poll_interval_s: float = 15.0,
        on_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.repository = repository
        self.mode = mode.lower()
        self._interval = poll_interval_s
        self._on_change = on_change
        self._seen: dict[str, Fingerprint] = {}
        self._poller: asyncio.Task[None] | None = None

    # -- start and stop -------------------------------------------------------------------
    async def start(self, load_models: tuple[str, ...] = ()) -> None:
        """Load what the mode loads at start; in poll mode, then poll until ``stop``."""
        names = () if self.mode != EXPLICIT or load_models == ("*",) else load_models
        if self.mode == POLL:
            # Taken before loading, so a file that changes while the models load is seen by
            # the first poll (which then reloads only what really changed).
            self._seen = await asyncio.to_thread(scan, self.repository.root)
        await self.repository.load_all(names)
        if self.mode == POLL:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="repository-poller")
            log.info("polling %s for model changes every %gs", self.repository.root, self._interval)

    async def stop(self) -> None:
        """Stop polling (a load the poller started finishes first: nothing is left half-swapped)."""
        poller, self._poller = self._poller, None
        if poller is None:
            return
        poller.cancel()
        try:
            await poller
        except asyncio.CancelledError:
            pass

    # -- the RPCs -------------------------------------------------------------------------
    async def load(self, name: str, parameters: Mapping[str, object]) -> None:
        """RepositoryModelLoad: load or reload ``name``; ``parameters["config"]`` (a JSON
        ModelConfig) replaces config.pbtxt for this load, as in Triton."""
        self._check_allowed()
        unknown = sorted(k for k in parameters if k != CONFIG_PARAMETER)
        if unknown:
            files = [k for k in unknown if k.startswith("file:")]
            hint = "; put model files in the repository folder instead" if files else ""
            raise InvalidInput(f"load parameters {unknown} are not supported (only {CONFIG_PARAMETER!r}){hint}")
        config = None
        if CONFIG_PARAMETER in parameters:
            text = parameters[CONFIG_PARAMETER]
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput(f"load parameter {CONFIG_PARAMETER!r} must be a non-empty string_param holding a JSON ModelConfig")
            config = config_from_json(text, name)
        try:
            await self.repository.load(name, config)
        finally:
            await self._notify()

    async def unload(self, name: str, parameters: Mapping[str, object]) -> None:
        """RepositoryModelUnload: requests already accepted finish; new ones are refused."""
        self._check_allowed()
        unknown = sorted(k for k in parameters if k not in UNLOAD_PARAMETERS)
        if unknown:
            raise InvalidInput(f"unload parameters {unknown} are not supported")
        try:
            await self.repository.unload(name)
        finally:
            await self._notify()

    def _check_allowed(self) -> None:
        if self.mode == EXPLICIT:
            return
        why = (
            f"the repository is polled every {self._interval:g}s: change its files instead"
            if self.mode == POLL
            else "models are loaded once at start"
        )
        # Triton answers UNAVAILABLE "explicit model load / unload is not allowed if polling is
        # enabled" in both modes; the same words first, so clients matching them keep working.
        raise ModelControlDisabled(
            f"explicit model load / unload is not allowed: model control mode is {self.mode!r} ({why}); "
            "start the server with --model-control-mode explicit to use it"
        )

    # -- polling --------------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)  # the polling period itself, not a synchronisation
            try:
                await self.poll()
            except Exception:  # a bug in one scan must not end polling
                log.exception("repository poll failed")

    async def poll(self) -> list[str]:
        """One scan: load new models, reload changed ones, unload removed ones; returns the
        names acted on."""
        current = await asyncio.to_thread(scan, self.repository.root)
        acted = []
        for name in sorted(set(self._seen) - set(current)):
            if name in self.repository.known_names():
                log.info("model %s left the repository: unloading", name)
                await self.repository.unload(name, forget=True)
                acted.append(name)
        known = set(self.repository.known_names())
        for name, fingerprint in sorted(current.items()):
            if self._seen.get(name) == fingerprint:
                continue
            if name not in known and not (self.repository.root / name / CONFIG_FILE).is_file():
                continue  # not a model (yet): a folder being filled, or something else
            log.info("model %s changed on disk: loading what changed", name)
            try:
                await self.repository.load(name)
            except AttnServeError:
                pass  # logged and shown in RepositoryIndex; retried once its files change again
            acted.append(name)
        self._seen = current
        if acted:
            await self._notify()
        return acted

    async def _notify(self) -> None:
        if self._on_change is not None:
            await self._on_change()


def scan(root: Path) -> dict[str, Fingerprint]:
    """Each folder of ``root`` with the stat of every file in it (hidden files, such as an
    exporter's temporary files, left out). A folder counts until it is gone: one whose
    config.pbtxt is missing for a moment (an editor saving it) fails to reload and keeps
    serving, it is not unloaded."""
    if not root.is_dir():
        return {}
    return {
        folder.name: folder_files(folder)
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.name.startswith(".")
    }
