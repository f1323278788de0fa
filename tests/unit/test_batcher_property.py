"""Property: under any mix of concurrent requests (rows, widths, dtypes, sequence lengths,
priorities, some cancelled), every surviving caller gets exactly its own rows back, computed
once; no batch exceeds max_batch_size rows; no batch mixes shapes or dtypes; nothing is left
queued and nothing reaches the loop's exception handler.

``execute`` is elementwise in the inputs, so every result is checkable; the request's id is
encoded in its values, so the batches show who was computed where.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.batching import BatchingPolicy, DynamicBatcher

pytestmark = pytest.mark.timeout(120)

PAD = -7


@dataclass(frozen=True)
class Req:
    rows: int
    width: int  # fixed dim of "x": requests of different widths may never share a batch
    length: int  # variable dim of "ids": padded, so different lengths may share a batch
    wide_float: bool  # float64 rather than float32: may never share a batch either
    priority: int | None
    cancel: bool

    def inputs(self, request_id: int) -> dict[str, np.ndarray]:
        base = request_id * 1000
        x = base + np.arange(self.rows * self.width).reshape(self.rows, self.width)
        ids = base + 1 + np.arange(self.rows * self.length).reshape(self.rows, self.length)
        x_dtype = np.float64 if self.wide_float else np.float32
        return {"x": x.astype(x_dtype), "ids": ids.astype(np.int64)}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[BatchingPolicy, list[Req]]:
    max_rows = draw(st.integers(1, 8))
    levels = draw(st.sampled_from([0, 2]))
    policy = BatchingPolicy(
        max_batch_size=max_rows,
        preferred_batch_sizes=tuple(draw(st.sets(st.integers(1, max_rows), max_size=2))),
        max_queue_delay_s=draw(st.sampled_from([0.0, 0.001])),
        max_concurrent_batches=draw(st.integers(1, 3)),
        priority_levels=levels,
        default_priority=2 if levels else 0,
        pad_values={"ids": PAD},
        variable_output_axes={"tok": (1,)},
    )
    request = st.builds(
        Req,
        rows=st.integers(1, max_rows),
        width=st.sampled_from([2, 3]),
        length=st.integers(1, 6),
        wide_float=st.booleans(),
        priority=st.sampled_from([None, 1, 2]),
        cancel=st.sampled_from([False] * 5 + [True]),
    )
    return policy, draw(st.lists(request, min_size=1, max_size=24))


async def run_scenario(policy: BatchingPolicy, reqs: list[Req]) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    batches: list[dict[str, np.ndarray]] = []

    async def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batches.append(inputs)
        await asyncio.sleep(0)  # lets submits, cancels and other batches interleave
        x, ids = inputs["x"], inputs["ids"]
        return {"y": x * 2 + 1, "tok": ids * 3, "real": (ids != PAD).sum(axis=1)}

    batcher = DynamicBatcher("prop", policy, execute)
    batcher.start()
    inputs = [req.inputs(i) for i, req in enumerate(reqs)]
    tasks = [
        asyncio.create_task(batcher.submit(data, priority=req.priority))
        for req, data in zip(reqs, inputs)
    ]
    await asyncio.sleep(0)  # a random point in the middle of things, not synchronisation
    for req, task in zip(reqs, tasks):
        if req.cancel:
            task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await batcher.stop(10)

    computed: list[int] = []
    for batch in batches:
        x = batch["x"]
        assert x.shape[0] <= policy.max_batch_size
        assert batch["ids"].shape[0] == x.shape[0]
        computed.extend(int(value) // 1000 for value in x[:, 0])
    for i, (req, data, outcome) in enumerate(zip(reqs, inputs, outcomes)):
        if isinstance(outcome, asyncio.CancelledError):
            assert req.cancel
            continue
        assert not isinstance(outcome, BaseException), outcome
        # Its own rows, computed once, in its own dtype (a mixed-dtype batch would upcast).
        assert computed.count(i) == req.rows
        assert outcome["y"].dtype == data["x"].dtype
        np.testing.assert_array_equal(outcome["y"], data["x"] * 2 + 1)
        # Cut back to its own length: no pad values leak into the response.
        np.testing.assert_array_equal(outcome["tok"], data["ids"] * 3)
        np.testing.assert_array_equal(outcome["real"], np.full(req.rows, req.length))
    # Each computed request's rows appear once and together.
    assert len(computed) == sum(reqs[i].rows for i in set(computed))
    assert batcher.queue_depth == 0
    assert loop_errors == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_caller_gets_exactly_its_own_rows(scenario: tuple[BatchingPolicy, list[Req]]) -> None:
    policy, reqs = scenario
    asyncio.run(run_scenario(policy, reqs))
