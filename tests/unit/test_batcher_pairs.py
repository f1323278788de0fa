"""DynamicBatcher with two sequence inputs padded on their own (a query and a source, as the
cross-attention pair model takes them): each pads to its own longest in the batch, and a
query-by-source output is cut back along each axis to that request's own lengths."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import BatchingPolicy, DynamicBatcher
from service.errors import InvalidInput, ModelLoadError
from service.model_config import _output_lengths

pytestmark = pytest.mark.timeout(20)

PAIR_POLICY = BatchingPolicy(
    max_batch_size=8,
    max_queue_delay_s=600,
    preferred_batch_sizes=(3,),
    pad_values={"query_ids": 0, "source_ids": 0},
    variable_output_axes={"cross": (1, 2), "query_tokens": (1,)},
    output_lengths={"cross": {1: "query_ids", 2: "source_ids"}, "query_tokens": {1: "query_ids"}},
)


def _pair(request_id: int, query: int, source: int) -> dict[str, np.ndarray]:
    return {
        "query_ids": (request_id * 100 + np.arange(1, query + 1, dtype=np.int64)).reshape(1, query),
        "source_ids": (request_id * 100 + 50 + np.arange(1, source + 1, dtype=np.int64)).reshape(1, source),
    }


async def _cross(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stands in for the pair model: cross[b, i, j] = 1 where query i and source j are real."""
    q, s = inputs["query_ids"] != 0, inputs["source_ids"] != 0
    return {
        "cross": (q[:, :, None] & s[:, None, :]).astype(np.float32),
        "query_tokens": inputs["query_ids"] * 2,
        "same": np.ones((len(q), 1), np.float32),
    }


async def test_each_input_pads_to_its_own_longest_and_outputs_cut_per_axis() -> None:
    seen: list[dict[str, np.ndarray]] = []

    async def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(inputs)
        return await _cross(inputs)

    batcher = DynamicBatcher("pair", PAIR_POLICY, execute)
    batcher.start()
    # Longest query (6) and longest source (9) come from different requests.
    requests = [_pair(1, 6, 2), _pair(2, 2, 9), _pair(3, 4, 4)]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))

    assert len(seen) == 1
    assert seen[0]["query_ids"].shape == (3, 6) and seen[0]["source_ids"].shape == (3, 9)
    np.testing.assert_array_equal(seen[0]["query_ids"][1], [201, 202, 0, 0, 0, 0])
    np.testing.assert_array_equal(seen[0]["source_ids"][0], [151, 152, 0, 0, 0, 0, 0, 0, 0])
    for request, result in zip(requests, results):
        tq, ts = request["query_ids"].shape[1], request["source_ids"].shape[1]
        assert result["cross"].shape == (1, tq, ts)
        assert result["cross"].all()  # nothing padded is left in the answer
        np.testing.assert_array_equal(result["query_tokens"], request["query_ids"] * 2)
        assert result["same"].shape == (1, 1)
    await batcher.stop(5)


async def test_inputs_of_one_request_may_differ_in_length_only_when_declared() -> None:
    batcher = DynamicBatcher("pair", PAIR_POLICY, _cross)
    batcher.start()
    result = await batcher.submit(_pair(1, 3, 7))  # alone: nothing padded, nothing cut
    assert result["cross"].shape == (1, 3, 7)
    await batcher.stop(5)

    undeclared = BatchingPolicy(
        max_batch_size=8, pad_values={"query_ids": 0, "source_ids": 0},
        variable_output_axes={"cross": (1, 2)},
    )
    other = DynamicBatcher("pair", undeclared, _cross)
    other.start()
    with pytest.raises(InvalidInput, match="same length"):
        await other.submit(_pair(1, 3, 7))
    await other.stop(5)


def test_policy_refuses_lengths_that_follow_no_padded_input() -> None:
    with pytest.raises(ValueError, match="not a padded input"):
        BatchingPolicy(
            max_batch_size=8, pad_values={"query_ids": 0}, variable_output_axes={"cross": (1, 2)},
            output_lengths={"cross": {2: "source_ids"}},
        )
    with pytest.raises(ValueError, match="variable axes"):
        BatchingPolicy(
            max_batch_size=8, pad_values={"query_ids": 0}, variable_output_axes={"cross": (1,)},
            output_lengths={"cross": {3: "query_ids"}},
        )


def test_output_lengths_parameter_parses_and_rejects_malformed_text() -> None:
    text = "cross_attention:2=query_ids,3=source_ids; other:1=query_ids"
    assert _output_lengths(text, "m") == {
        "cross_attention": {2: "query_ids", 3: "source_ids"}, "other": {1: "query_ids"},
    }
    assert _output_lengths("", "m") == {}
    for bad in ("cross_attention", "cross_attention:x=query_ids", ":2=query_ids", "c:2="):
        with pytest.raises(ModelLoadError, match="OUTPUT:AXIS=INPUT"):
            _output_lengths(bad, "m")
