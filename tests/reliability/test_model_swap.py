"""Model control under load (issue 18): nothing lost, nothing CANCELLED.

Many grpc.aio clients (tritonclient's asyncio client, closed loop on ModelInfer for the SE-CNN)
while the model changes under them:

- poll mode: new version folders are renamed into the repository, one after the other; each is
  loaded beside the serving one, warmed up, swapped in, and the old instance drains;
- explicit mode: RepositoryModelUnload while requests are queued and running.

Every answer must be a success with the right numbers for the version it names, or a refusal
before any work: UNAVAILABLE (the model is not served any more) or NOT_FOUND (the version is
not). Anything else (CANCELLED above all) fails the test. The counts are printed as figures
(pytest -s). Knobs: ATTNSERVE_SWAP_CLIENTS (default 32), ATTNSERVE_SWAP_ROUNDS (swaps in the
poll test, default 2), ATTNSERVE_SWAP_ANSWERS (answers awaited per phase, default 60).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Mapping

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.integration.support import ATOL, RTOL, SECNN, infer_inputs, message_of, sample_inputs, status_of, wait_until_async
from tests.integration.versions import FileReference, add_version, perturbed_onnx

CLIENTS = int(os.environ.get("ATTNSERVE_SWAP_CLIENTS", "32"))
ROUNDS = int(os.environ.get("ATTNSERVE_SWAP_ROUNDS", "2"))
ANSWERS = int(os.environ.get("ATTNSERVE_SWAP_ANSWERS", "60"))
CHANNELS = 4  # clients share a few channels, as an application's connection pool does
REFUSED = {"UNAVAILABLE", "NOT_FOUND"}
WAIT_S = 120.0


class ClosedLoop:
    """``clients`` callers, each sending its next request as soon as it has an answer."""

    def __init__(self, url: str, arrays: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> None:
        self._url = url
        self._arrays = arrays
        self._expected = expected  # version -> logits
        self.outcomes: Counter[str] = Counter()  # "OK v<N>", status names, "WRONG ..."
        self.calls: list[tuple[float, float, str]] = []  # (sent, answered, outcome)
        self.odd: list[str] = []  # messages of answers that are neither success nor refusal

    def ok(self, version: str | None = None) -> int:
        if version is not None:
            return self.outcomes[f"OK v{version}"]
        return sum(n for key, n in self.outcomes.items() if key.startswith("OK "))

    @asynccontextmanager
    async def running(self, clients: int, *, stop_when_refused: bool = False) -> AsyncIterator[list[asyncio.Task]]:
        channels = [aioclient.InferenceServerClient(self._url) for _ in range(CHANNELS)]
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(self._caller(channels[i % CHANNELS], stop, stop_when_refused)) for i in range(clients)
        ]
        try:
            yield tasks
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for channel in channels:
                await channel.close()

    async def _caller(self, client: aioclient.InferenceServerClient, stop: asyncio.Event, stop_when_refused: bool) -> None:
        inputs = infer_inputs(self._arrays, aioclient)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                result = await client.infer(SECNN, inputs, client_timeout=60)
            except InferenceServerException as error:
                outcome = status_of(error)
                if outcome not in REFUSED:
                    self.odd.append(f"{outcome}: {message_of(error)}")
            else:
                version = result.get_response().model_version
                want = self._expected.get(version)
                right = want is not None and np.allclose(result.as_numpy("logits"), want, rtol=RTOL, atol=ATOL)
                outcome = f"OK v{version}" if right else f"WRONG v{version}"
            self.outcomes[outcome] += 1
            self.calls.append((sent, time.monotonic(), outcome))
            if stop_when_refused and outcome in REFUSED:
                return


def _versions(source: Path, folder: Path, count: int) -> dict[str, Path]:
    """Version 1 (the exported file) and ``count`` more, each with other weights."""
    files = {"1": source}
    for n in range(2, count + 2):
        files[str(n)] = perturbed_onnx(source, folder / str(n) / "model.onnx", 1.0 + 0.25 * (n - 1))
    return files


def _logits(files: Mapping[str, Path], arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {v: FileReference(path).run(arrays)["logits"] for v, path in files.items()}


def _assert_nothing_lost(load: ClosedLoop) -> None:
    assert not load.odd, f"answers neither success nor refusal: {Counter(load.odd).most_common(5)}"
    assert all(k.startswith("OK ") or k in REFUSED for k in load.outcomes), load.outcomes  # no WRONG answers
    assert load.outcomes["CANCELLED"] == 0


async def test_poll_swaps_under_load_lose_nothing(start_server, make_repository, model_repository, tmp_path, figures) -> None:
    repository = make_repository(models=(SECNN,))
    model_dir = repository / SECNN
    server = start_server("--model-control-mode", "poll", "--repository-poll-secs", "0.2", repository=repository)
    files = _versions(model_dir / "1" / "model.onnx", tmp_path / "versions", ROUNDS)
    arrays = sample_inputs(model_repository, SECNN, 1, np.random.default_rng(190))
    load = ClosedLoop(server.url, arrays, _logits(files, arrays))
    swaps = []

    async with load.running(CLIENTS):
        await wait_until_async(lambda: load.ok("1") >= ANSWERS, WAIT_S, "version 1 answering")
        for n in range(2, ROUNDS + 2):
            old, new = str(n - 1), str(n)
            started = time.monotonic()
            add_version(model_dir, n, files[new])
            drained = f"model {SECNN} version {old}: previous instance drained and unloaded"
            await wait_until_async(lambda: drained in server.log, WAIT_S, f"version {old} drained")
            swaps.append(round(time.monotonic() - started, 2))
            await wait_until_async(lambda: load.ok(new) >= ANSWERS, WAIT_S, f"version {new} answering")

    figures(
        scenario="poll swap under load", clients=CLIENTS, swaps=ROUNDS, requests=sum(load.outcomes.values()),
        answered=load.ok(), refused=sum(load.outcomes[c] for c in REFUSED), lost=len(load.odd),
        cancelled=load.outcomes["CANCELLED"], by_outcome=dict(sorted(load.outcomes.items())),
        swap_seconds=swaps,
    )
    _assert_nothing_lost(load)
    async with aioclient.InferenceServerClient(server.url) as client:
        assert (await client.get_model_metadata(SECNN)).versions == [str(ROUNDS + 1)]
    assert " ERROR " not in server.log, server.log[-3000:]


async def test_unload_under_load_loses_nothing(start_server, make_repository, model_repository, figures) -> None:
    """RepositoryModelUnload with requests queued and running: those finish (the batcher
    drains before the sessions close), later ones are refused with UNAVAILABLE."""
    repository = make_repository(models=(SECNN,))
    server = start_server(repository=repository)
    arrays = sample_inputs(model_repository, SECNN, 1, np.random.default_rng(191))
    load = ClosedLoop(server.url, arrays, _logits({"1": repository / SECNN / "1" / "model.onnx"}, arrays))

    async with load.running(CLIENTS, stop_when_refused=True) as callers:
        await wait_until_async(lambda: load.ok() >= ANSWERS, WAIT_S, "answers flowing")
        async with aioclient.InferenceServerClient(server.url) as control:
            unload_at = time.monotonic()
            await control.unload_model(SECNN)
            unloaded_at = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*callers), WAIT_S)  # each caller ends refused
            assert not await control.is_model_ready(SECNN)

    across = [outcome for sent, answered, outcome in load.calls if sent < unload_at < answered]
    figures(
        scenario="unload under load", clients=CLIENTS, requests=sum(load.outcomes.values()), answered=load.ok(),
        refused=sum(load.outcomes[c] for c in REFUSED), lost=len(load.odd), cancelled=load.outcomes["CANCELLED"],
        in_flight_at_unload=len(across), of_which_answered=sum(o.startswith("OK ") for o in across),
        unload_seconds=round(unloaded_at - unload_at, 3),
    )
    _assert_nothing_lost(load)
    assert sum(load.outcomes[c] for c in REFUSED) == CLIENTS  # each caller's last request, refused
    with_index = await _index(server.url)
    assert with_index == {"1": ("UNAVAILABLE", "unloaded")}
    assert server.metric("attnserve_model_ready", model=SECNN, version="1") == 0
    assert server.metric("attnserve_inflight_requests", model=SECNN, version="1") == 0


async def _index(url: str) -> dict[str, tuple[str, str]]:
    async with aioclient.InferenceServerClient(url) as client:
        reply = await client.get_model_repository_index()
    return {m.version: (m.state, m.reason) for m in reply.models if m.name == SECNN}

