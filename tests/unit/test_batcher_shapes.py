"""DynamicBatcher: shape groups, padding of variable-length inputs, cutting outputs back, and
models that run every request alone (no batch dim, or no dynamic batching)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import BatchingPolicy, DynamicBatcher
from service.errors import InvalidInput, QueueFull
from tests.unit.test_batcher_fakes import Harness, assert_outputs, rows

pytestmark = pytest.mark.timeout(20)


# ---- shape groups --------------------------------------------------------------------------------


async def test_different_shapes_or_dtypes_never_share_a_batch() -> None:
    h = Harness(BatchingPolicy(max_batch_size=8), held=True)
    running = h.submit(rows(8))
    await h.model.started.get()
    a = rows(1, 0, width=3)
    b = rows(1, 100, width=5)
    c = rows(2, 200, width=3)
    d = {"x": rows(1, 300, width=3)["x"].astype(np.float64)}
    tasks = [h.submit(a), h.submit(b), h.submit(c), h.submit(d)]
    h.model.release()
    results = await asyncio.gather(running, *tasks)
    # The oldest request's group first (a + c, skipping b), then b, then d.
    shapes = [(batch["x"].shape, batch["x"].dtype) for batch in h.model.batches[1:]]
    assert shapes == [((3, 3), np.float32), ((1, 5), np.float32), ((1, 3), np.float64)]
    for got, inputs in zip(results[1:], (a, b, c, d)):
        assert_outputs(got, inputs)
        assert got["x_out"].dtype == inputs["x"].dtype


async def test_requests_with_different_input_names_never_share_a_batch() -> None:
    h = Harness(BatchingPolicy(max_batch_size=8), held=True)
    running = h.submit(rows(8))
    await h.model.started.get()
    with_extra = {**rows(1, 0), "y": np.ones((1, 1), np.float32)}
    tasks = [h.submit(rows(1, 10)), h.submit(with_extra), h.submit(rows(1, 20))]
    h.model.release()
    await asyncio.gather(running, *tasks)
    assert [sorted(batch) for batch in h.model.batches[1:]] == [["x"], ["x", "y"]]
    assert h.model.batch_rows[1:] == [2, 1]


# ---- padding -------------------------------------------------------------------------------------


def _sequence(request_id: int, length: int) -> dict[str, np.ndarray]:
    """One encoder request: token ids (non-zero) and a mask of ones, both [1, length]."""
    ids = (request_id * 100 + np.arange(1, length + 1, dtype=np.int64)).reshape(1, length)
    return {"input_ids": ids, "attention_mask": np.ones((1, length), np.int64)}


async def _encoder(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stands in for the transformer encoder: a fixed-size output and two variable-length ones."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    return {
        "embedding": (ids * mask).sum(axis=1, keepdims=True).astype(np.float32),  # [B, 1]
        "tokens": ids * 2,  # [B, L]
        "attention": mask[:, :, None] * mask[:, None, :],  # [B, L, L]
    }


ENCODER_POLICY = BatchingPolicy(
    max_batch_size=8,
    max_queue_delay_s=600,
    preferred_batch_sizes=(3,),
    pad_values={"input_ids": 0, "attention_mask": 0},
    variable_output_axes={"tokens": (1,), "attention": (1, 2)},
)


async def test_different_lengths_share_a_batch_padded_to_the_longest() -> None:
    seen: list[dict[str, np.ndarray]] = []

    async def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(inputs)
        return await _encoder(inputs)

    batcher = DynamicBatcher("encoder", ENCODER_POLICY, execute)
    batcher.start()
    requests = [_sequence(1, 3), _sequence(2, 5), _sequence(3, 1)]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))

    assert len(seen) == 1 and seen[0]["input_ids"].shape == (3, 5)
    np.testing.assert_array_equal(seen[0]["attention_mask"][0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(seen[0]["input_ids"][2], [301, 0, 0, 0, 0])
    for request, result in zip(requests, results):
        ids = request["input_ids"]
        length = ids.shape[1]
        # Each response is cut back to the request's own length: padding never leaks out.
        np.testing.assert_array_equal(result["tokens"], ids * 2)
        assert result["attention"].shape == (1, length, length)
        assert result["attention"].all()
        np.testing.assert_array_equal(result["embedding"], ids.sum(axis=1, keepdims=True))
    await batcher.stop(5)


async def test_padding_bound_groups_requests_of_similar_length() -> None:
    """With max_padding_ratio 0.5, a batch's rows x longest length stays within 1.5x its real
    tokens: a length-100 request is passed over by a batch of short ones and heads its own,
    with the other long one, once it is the oldest."""
    from dataclasses import replace

    policy = replace(ENCODER_POLICY, preferred_batch_sizes=(), max_padding_ratio=0.5)
    h = Harness(policy, held=True)
    blocker = h.submit(_sequence(9, 4))  # runs at once (idle), then held
    await h.model.started.get()
    lengths = [10, 100, 12, 9, 90, 11]
    tasks = [h.submit(_sequence(i + 1, n)) for i, n in enumerate(lengths)]
    await h.settle(len(lengths))
    h.model.release()
    await h.batcher.stop(5)  # drains: no waiting for the 600 s delay
    results = await asyncio.gather(blocker, *tasks)
    shapes = [batch["input_ids"].shape for batch in h.model.batches[1:]]
    # 10, 12, 9, 11 together (4 x 12 = 48 <= 1.5 x 42); then 100 and 90 (2 x 100 <= 1.5 x 190).
    assert shapes == [(4, 12), (2, 100)]
    for (i, n), result in zip(enumerate(lengths), results[1:]):
        # Each caller still gets its own rows (the fake's outputs are not cut back).
        np.testing.assert_array_equal(result["input_ids_out"][:, :n], _sequence(i + 1, n)["input_ids"] * 2 + 1)


async def test_without_a_padding_bound_the_longest_request_pads_the_whole_batch() -> None:
    from dataclasses import replace

    h = Harness(replace(ENCODER_POLICY, preferred_batch_sizes=()), held=True)
    blocker = h.submit(_sequence(9, 4))
    await h.model.started.get()
    tasks = [h.submit(_sequence(i + 1, n)) for i, n in enumerate([10, 100, 12])]
    await h.settle(3)
    h.model.release()
    await h.batcher.stop(5)
    await asyncio.gather(blocker, *tasks)
    assert [batch["input_ids"].shape for batch in h.model.batches[1:]] == [(3, 100)]


async def test_pad_value_is_the_configured_one() -> None:
    seen: list[np.ndarray] = []

    async def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(inputs["x"])
        return {"y": inputs["x"]}

    policy = BatchingPolicy(max_batch_size=4, max_queue_delay_s=600, pad_values={"x": -1.5})
    batcher = DynamicBatcher("m", policy, execute)
    batcher.start()
    short, long_ = np.zeros((1, 1), np.float32), np.ones((3, 2), np.float32)
    await asyncio.gather(batcher.submit({"x": short}), batcher.submit({"x": long_}))
    np.testing.assert_array_equal(seen[0][0], [0.0, -1.5])
    await batcher.stop(5)


async def test_pad_axes_limit_padding_to_the_variable_dims() -> None:
    policy = BatchingPolicy(
        max_batch_size=8, max_queue_delay_s=600, preferred_batch_sizes=(2,),
        pad_values={"x": 0}, pad_axes={"x": (2,)}, variable_output_axes={"x_out": (2,)},
    )
    h = Harness(policy, held=True)
    running = h.submit({"x": np.zeros((8, 2, 1), np.float32)})
    await h.model.started.get()
    # A fixed dim (axis 1) that differs is a different shape, not something to pad.
    a = {"x": np.ones((1, 2, 3), np.float32)}
    b = {"x": np.ones((1, 3, 3), np.float32)}
    c = {"x": np.ones((1, 2, 1), np.float32)}
    task_a, task_b, task_c = h.submit(a), h.submit(b), h.submit(c)
    h.model.release()
    await asyncio.gather(running, task_a, task_c)  # a + c make the preferred size 2
    await h.batcher.stop(5)  # b is alone in its group: drained without waiting for the delay
    await task_b
    assert [batch["x"].shape for batch in h.model.batches[1:]] == [(2, 2, 3), (1, 3, 3)]
    # The length is the padded axis only: c is cut back to 1, although axis 1 has size 2.
    assert task_c.result()["x_out"].shape == (1, 2, 1)
    assert task_a.result()["x_out"].shape == (1, 2, 3)


async def test_padded_inputs_of_one_request_must_agree_on_length() -> None:
    batcher = DynamicBatcher("encoder", ENCODER_POLICY, _encoder)
    batcher.start()
    bad = {"input_ids": np.ones((1, 4), np.int64), "attention_mask": np.ones((1, 5), np.int64)}
    with pytest.raises(InvalidInput, match="same length"):
        await batcher.submit(bad)
    await batcher.stop(5)


async def test_non_padded_inputs_still_split_groups_in_a_padded_model() -> None:
    policy = BatchingPolicy(max_batch_size=4, max_queue_delay_s=600, pad_values={"ids": 0})
    h = Harness(policy, held=True)
    running = h.submit({"ids": np.ones((4, 2), np.int64), "z": np.ones((4, 3), np.float32)})
    await h.model.started.get()
    tasks = [
        h.submit({"ids": np.ones((2, 2), np.int64), "z": np.ones((2, 3), np.float32)}),
        h.submit({"ids": np.ones((2, 5), np.int64), "z": np.ones((2, 4), np.float32)}),
    ]
    await h.settle(2)
    h.model.release()
    await running
    await h.batcher.stop(5)  # drains the two partial batches without waiting for the delay
    await asyncio.gather(*tasks)
    assert [batch["z"].shape for batch in h.model.batches[1:]] == [(2, 3), (2, 4)]


# ---- one request per execution -------------------------------------------------------------------


async def test_model_without_batch_dim_runs_each_request_alone_unchanged() -> None:
    h = Harness(BatchingPolicy(max_batch_size=0), held=True)
    first = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    second = {"x": np.arange(4, dtype=np.float32)}
    running = h.submit(first)
    await h.model.started.get()
    queued = h.submit(second)
    h.model.release()
    results = await asyncio.gather(running, queued)
    assert [batch["x"].shape for batch in h.model.batches] == [(2, 3), (4,)]
    assert_outputs(results[0], first)
    assert_outputs(results[1], second)
    assert [rows for rows, _, _ in h.observer.finished] == [1, 1]
    await h.batcher.stop(5)


async def test_without_dynamic_batching_each_request_runs_alone() -> None:
    h = Harness(BatchingPolicy(max_batch_size=4, dynamic=False, max_queue_delay_s=600), held=True)
    running = h.submit(rows(1, 0))
    await h.model.started.get()
    tasks = [h.submit(rows(1, 10)), h.submit(rows(2, 20))]
    h.model.release()
    await asyncio.gather(running, *tasks)
    assert h.model.batch_rows == [1, 1, 2]
    with pytest.raises(InvalidInput):
        await h.batcher.submit(rows(5))
    await h.batcher.stop(5)


async def test_unbatched_model_keeps_the_queue_bound() -> None:
    h = Harness(BatchingPolicy(max_batch_size=0, max_queue_size=1), held=True)
    running = h.submit({"x": np.zeros(3, np.float32)})
    await h.model.started.get()
    queued = await h.submit_and_settle({"x": np.zeros(3, np.float32)})
    with pytest.raises(QueueFull):
        await h.batcher.submit({"x": np.zeros(3, np.float32)})
    h.model.release()
    await asyncio.gather(running, queued)
    await h.batcher.stop(5)
