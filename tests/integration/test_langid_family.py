"""The attention family (langid_dot, langid_additive, langid_mha) on the real server: ragged
batches padded by the batcher, padded tokens at exactly zero weight, the same answers over v2,
the attnserve API and its CLI, and perf_analyzer against each member.

The ragged tests use a dedicated server whose family models hold their queue (as
test_batching.py does): a batch runs exactly when its fourth row arrives, so what shares an
execution is decided by the test, and ModelStatistics proves it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from export.defaults import LANGID_FAMILY
from service.client import Client
from service.proto.inference import model_config_pb2 as mc
from tests.conftest import REPO_ROOT, ServerProcess, copy_repository
from tests.integration.support import (
    HOLD_US,
    assert_matches,
    infer_inputs,
    sample_inputs,
    wait_for_the_delay,
    wait_until_async,
)

BATCH = 4
HEADS = {"langid_dot": 1, "langid_additive": 1, "langid_mha": 4}
CLASSIFIERS = tuple(HEADS)  # the one-sequence members; langid_pair reads two
# Phrases no test split holds, in three of the ten languages.
PHRASES = {
    "de": "Wir haben heute keine Zeit für das Gespräch",
    "fr": "nous avons toujours voulu partir avec eux",
    "pl": "Wszyscy ludzie rodzą się wolni i równi",
}


def _hold(config: mc.ModelConfig) -> None:
    db = config.dynamic_batching
    db.max_queue_delay_microseconds = HOLD_US
    wait_for_the_delay(config)
    del config.parameters["attnserve.max_padding_ratio"]  # lengths 3, 40 and 17 in one batch
    del db.preferred_batch_size[:]
    db.preferred_batch_size.append(BATCH)


@pytest.fixture(scope="module")
def held_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = copy_repository(
        model_repository, tmp_path_factory.mktemp("family"), LANGID_FAMILY, {m: _hold for m in LANGID_FAMILY}
    )
    process = ServerProcess(repository).start()
    yield process
    process.stop()


@pytest.fixture
async def held(held_server: ServerProcess) -> AsyncIterator[aioclient.InferenceServerClient]:
    client = aioclient.InferenceServerClient(held_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def api(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url, timeout=120) as c:
        yield c


async def _stats(client: aioclient.InferenceServerClient, model: str) -> tuple[int, int]:
    s = (await client.get_inference_statistics(model)).model_stats[0]
    return s.inference_count, s.execution_count


@pytest.mark.parametrize("model", CLASSIFIERS)
async def test_ragged_batch_gives_padded_tokens_exactly_zero_weight(
    model: str, held_server: ServerProcess, held: aioclient.InferenceServerClient, model_repository: Path, reference
) -> None:
    """Three lengths share one execution the batcher pads to 40 tokens; each answer equals the
    request run alone, its weights over its own tokens sum to 1 (so the tokens the batcher
    added got none), and tokens a client masked inside its own request get exactly 0."""
    rng = np.random.default_rng(15)
    lengths = (3, 40, 17)
    requests = [sample_inputs(model_repository, model, 1, rng, length=n) for n in lengths]
    masked = sample_inputs(model_repository, model, 1, rng, length=3)
    masked["attention_mask"][0, -2:] = 0  # its own padding: two masked tokens
    masked["input_ids"][0, -2:] = 0
    requests[0] = {k: np.concatenate([requests[0][k], masked[k]]) for k in requests[0]}
    before = await _stats(held, model)
    tasks = [asyncio.create_task(held.infer(model, infer_inputs(r, aioclient))) for r in requests[:-1]]
    await wait_until_async(
        lambda: held_server.metric("attnserve_queue_depth", model=model) == len(tasks), what="queued"
    )
    results = await asyncio.wait_for(
        asyncio.gather(*tasks, held.infer(model, infer_inputs(requests[-1], aioclient))), 60
    )
    after = await _stats(held, model)
    assert (after[0] - before[0], after[1] - before[1]) == (BATCH, 1)  # one padded execution

    for arrays, length, result in zip(requests, lengths, results):
        assert_matches(result, reference.run(model, arrays))
        pooling = result.as_numpy("attention")
        assert pooling.shape == (len(arrays["input_ids"]), HEADS[model], 1, length)
        real = arrays["attention_mask"].astype(bool)
        np.testing.assert_allclose(pooling.sum(axis=-1), 1.0, rtol=1e-6, atol=1e-6)
        assert np.count_nonzero(pooling[~real[:, None, None, :].repeat(HEADS[model], 1)]) == 0
        if model == "langid_mha":
            self_attention = result.as_numpy("self_attention")
            assert self_attention.shape == (len(real), 4, length, length)
            keys = np.broadcast_to(real[:, None, None, :], self_attention.shape)
            assert np.count_nonzero(self_attention[~keys]) == 0
    # The masked row (row 1 of the first request) attends over its first token only.
    assert np.count_nonzero(results[0].as_numpy("attention")[1, ..., 1:]) == 0


@pytest.mark.parametrize("model", CLASSIFIERS)
def test_encode_api_identifies_languages_and_returns_the_pooling_picture(
    model: str, api: Client, client: grpcclient.InferenceServerClient
) -> None:
    result = api.encode(list(PHRASES.values()), model=model, attention=True, top_k=3)
    assert result.model == model
    for (language, text), item in zip(PHRASES.items(), result.items, strict=True):
        assert item.labels[0].label == language, (text, item.labels)
        assert item.attention is not None and item.attention.shape == (HEADS[model], 1, len(text.encode()) + 2)
        np.testing.assert_allclose(item.attention.sum(axis=-1), 1.0, atol=1e-5)
        ids = item.ids[None, :]
        v2 = client.infer(model, infer_inputs({"input_ids": ids, "attention_mask": np.ones_like(ids)}))
        np.testing.assert_allclose(item.logits, v2.as_numpy("logits")[0], atol=1e-4)
        np.testing.assert_allclose(item.attention, v2.as_numpy("attention")[0], atol=1e-5)


def test_cli_draws_the_attention_picture_of_each_member(server: ServerProcess, tmp_path: Path) -> None:
    for model in CLASSIFIERS:
        done = subprocess.run(
            [sys.executable, "-m", "service", "attention", "encode", PHRASES["de"], "--model", model,
             "-o", f"{model}.png", "--json", "--url", server.url],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        weights = np.asarray(report["weights"])
        assert report["heads"] == HEADS[model] and weights.shape == (HEADS[model], len(report["tokens"]))
        np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
        assert (tmp_path / f"{model}.png").stat().st_size > 0
        label = subprocess.run(
            [sys.executable, "-m", "service", "encode", PHRASES["pl"], "--model", model, "--json", "--url", server.url],
            capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        )
        assert label.returncode == 0, label.stderr
        assert json.loads(label.stdout)[0]["labels"][0]["label"] == "pl"


# -- the cross-attention pair model -----------------------------------------------------------
PAIR = "langid_pair"


def _pair_inputs(query: int, source: int, rng: np.random.Generator, rows: int = 1) -> dict[str, np.ndarray]:
    draw = lambda n: rng.integers(36, 127, size=(rows, n)).astype(np.int64)  # noqa: E731  printable bytes + 4
    return {"query_ids": draw(query), "source_ids": draw(source)}


@pytest.mark.skipif(PAIR not in LANGID_FAMILY, reason="langid_pair is not a default model yet")
async def test_pair_inputs_pad_on_their_own_and_the_map_is_cut_per_axis(
    held_server: ServerProcess, held: aioclient.InferenceServerClient, reference
) -> None:
    """Query and source lengths vary independently inside one execution (the longest query and
    the longest source come from different requests); each request's cross-attention map comes
    back at its own query x source size, equal to the pair run alone, every row summing to 1."""
    rng = np.random.default_rng(16)
    shapes = ((3, 30), (25, 4), (12, 12))
    requests = [_pair_inputs(q, s, rng, rows=2 if i == 0 else 1) for i, (q, s) in enumerate(shapes)]
    before = await _stats(held, PAIR)
    tasks = [asyncio.create_task(held.infer(PAIR, infer_inputs(r, aioclient))) for r in requests[:-1]]
    await wait_until_async(lambda: held_server.metric("attnserve_queue_depth", model=PAIR) == len(tasks), what="queued")
    results = await asyncio.wait_for(asyncio.gather(*tasks, held.infer(PAIR, infer_inputs(requests[-1], aioclient))), 60)
    after = await _stats(held, PAIR)
    assert (after[0] - before[0], after[1] - before[1]) == (BATCH, 1)
    for arrays, (tq, ts), result in zip(requests, shapes, results):
        assert_matches(result, reference.run(PAIR, arrays))
        cross = result.as_numpy("cross_attention")
        assert cross.shape == (len(arrays["query_ids"]), 1, tq, ts)
        np.testing.assert_allclose(cross.sum(axis=-1), 1.0, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(PAIR not in LANGID_FAMILY, reason="langid_pair is not a default model yet")
def test_pair_encode_answers_same_language_with_its_cross_attention(api: Client) -> None:
    queries = [PHRASES["de"], PHRASES["de"], PHRASES["fr"]]
    sources = ["Ich weiß nicht, was soll es bedeuten", PHRASES["pl"], "le petit chat dort sur la table"]
    result = api.encode(queries, sources=sources, model=PAIR, attention=True)
    assert [item.labels[0].label for item in result.items] == ["same", "different", "same"]
    for query, source, item in zip(queries, sources, result.items, strict=True):
        tq, ts = len(query.encode()) + 2, len(source.encode()) + 2
        assert item.attention is not None and item.attention.shape == (1, tq, ts)
        np.testing.assert_allclose(item.attention.sum(axis=-1), 1.0, atol=1e-5)
        assert item.source_ids is not None and len(item.source_ids) == ts and item.source_tokens[0] == "<bos>"


@pytest.mark.skipif(PAIR not in LANGID_FAMILY, reason="langid_pair is not a default model yet")
def test_pair_cli_draws_query_tokens_by_source_tokens(server: ServerProcess, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "attention", "encode", "guten Tag", "--source", "wie geht es dir",
         "--model", PAIR, "-o", "pair.png", "--json", "--url", server.url],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    weights = np.asarray(report["weights"])
    assert weights.shape == (len("guten Tag") + 2, len("wie geht es dir") + 2)
    assert len(report["source_tokens"]) == weights.shape[1] and report["labels"][0]["label"] == "same"
    assert (tmp_path / "pair.png").stat().st_size > 0


@pytest.mark.skipif(PAIR not in LANGID_FAMILY, reason="langid_pair is not a default model yet")
def test_pair_requests_that_cannot_be_paired_are_refused(api: Client, client: grpcclient.InferenceServerClient) -> None:
    from service.client.connection import ClientError

    cases = [
        (dict(model=PAIR), "one source per sequence"),  # no sources
        (dict(model="langid_dot", sources=["b"]), "sources are for pair models"),
        (dict(model=PAIR, sources=[[1, 0, 7]]), "sources[0]: token id 0"),  # 0 is padding to the graph
    ]
    for kwargs, words in cases:
        with pytest.raises(ClientError) as caught:
            api.encode(["a"], **kwargs)
        assert caught.value.code == "INVALID_ARGUMENT" and words in caught.value.details
    assert client.is_model_ready(PAIR)  # and it serves on
