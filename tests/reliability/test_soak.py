"""Soak: steady mixed load on all three models; no memory growth, no descriptor leak.

Run it (10 minutes by default; slow-marked, so not in the default run):

    ATTNSERVE_SOAK_SECONDS=600 pytest -m slow tests/reliability/test_soak.py -s

The first ``WARMUP_FRACTION`` of the run lets allocators and caches settle; the server's RSS and
open file descriptors after it are the baseline. At the end RSS must be within 5 % of the
baseline and the descriptors no more than the baseline plus a small slack (sockets of
connections being set up). Every request must succeed; one in ten is checked against the
reference. Rates, latencies and the RSS / fd series are figures for the notes.
"""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import numpy as np
import pytest

from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.integration.support import MODELS, sample_inputs
from tests.reliability.support import open_fds, percentile, rss_bytes

SOAK_SECONDS = float(os.environ.get("ATTNSERVE_SOAK_SECONDS", "600"))
RATE = float(os.environ.get("ATTNSERVE_SOAK_RATE", "60"))  # requests per second, all models together
WARMUP_FRACTION = 0.2
SAMPLE_EVERY_S = 2.0
RSS_GROWTH = 0.05
FD_SLACK = 4
MiB = 1024 * 1024


def _request(model: str, arrays: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype={"float32": "FP32", "int64": "INT64"}[array.dtype.name], shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def _outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        o.name: np.frombuffer(raw, np.float32).reshape(o.shape)
        for o, raw in zip(response.outputs, response.raw_output_contents)
    }


@pytest.mark.slow
@pytest.mark.timeout(int(SOAK_SECONDS) + 300)
async def test_soak(server, model_repository, reference, figures) -> None:
    rng = np.random.default_rng(95)
    # A fixed set of varied requests (1-4 rows, sequences of 5-60 tokens), with their answers.
    cases = []
    for i in range(24):
        model = MODELS[i % 3]
        arrays = sample_inputs(model_repository, model, 1 + i % 4, rng, length=5 + (i * 7) % 56)
        cases.append((model, _request(model, arrays), reference.run(model, arrays)))

    latencies: list[float] = []
    failures: list[str] = []
    wrong: list[str] = []
    series: list[tuple[float, int, int]] = []  # (t, rss, fds)

    async with grpc.aio.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def call(index: int) -> None:
            model, request, expected = cases[index % len(cases)]
            t = time.perf_counter()
            try:
                response = await stub.ModelInfer(request, timeout=60)
            except grpc.aio.AioRpcError as error:
                failures.append(f"{model}: {error.code().name} {error.details()}")
                return
            latencies.append(time.perf_counter() - t)
            if index % 10 == 0:
                got = _outputs(response)
                for name, want in expected.items():
                    if got[name].shape != want.shape or not np.allclose(got[name], want, rtol=1e-4, atol=1e-5):
                        wrong.append(f"{model}.{name}")

        loop = asyncio.get_running_loop()
        started = loop.time()
        next_sample = started
        tasks: set[asyncio.Task] = set()
        sent = 0
        while (due := started + sent / RATE) < started + SOAK_SECONDS:
            now = loop.time()
            if now >= next_sample:
                series.append((now - started, rss_bytes(server.pid), open_fds(server.pid)))
                next_sample += SAMPLE_EVERY_S
            if due > now:
                await asyncio.sleep(due - now)  # pacing of a steady load
            task = asyncio.create_task(call(sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.gather(*list(tasks))
        elapsed = loop.time() - started
        series.append((elapsed, rss_bytes(server.pid), open_fds(server.pid)))

    warm = [s for s in series if s[0] >= WARMUP_FRACTION * SOAK_SECONDS]
    base_t, base_rss, base_fds = warm[0]
    end_t, end_rss, end_fds = series[-1]
    figures(
        seconds=round(elapsed, 1), requests=sent, rate_rps=round(sent / elapsed, 1),
        ms_p50=round(1000 * percentile(latencies, 50), 2), ms_p99=round(1000 * percentile(latencies, 99), 2),
        ms_max=round(1000 * max(latencies), 2),
        rss_at_start_mib=round(series[0][1] / MiB, 1), rss_baseline_mib=round(base_rss / MiB, 1),
        rss_end_mib=round(end_rss / MiB, 1), rss_max_mib=round(max(s[1] for s in warm) / MiB, 1),
        rss_growth_pct=round(100 * (end_rss - base_rss) / base_rss, 2),
        fds_baseline=base_fds, fds_end=end_fds, fds_max=max(s[2] for s in warm),
        baseline_at_s=round(base_t, 1),
    )
    assert not failures, failures[:10]
    assert not wrong, wrong[:10]
    assert end_rss <= base_rss * (1 + RSS_GROWTH), (base_rss, end_rss)
    assert end_fds <= base_fds + FD_SLACK, (base_fds, end_fds)
