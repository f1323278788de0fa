"""Faults: broken model files and a model that throws at run time.

A model whose files are broken (config.pbtxt that does not parse, a version folder without its
model.onnx, a graph that fails during warm-up) is reported not ready with a reason, in the
repository index, in the log, in health and in ``attnserve_model_ready``, while the other
models keep serving; RepositoryModelLoad brings it back once the files are fixed. A graph that
fails for some batches fails exactly the requests of those batches with INTERNAL naming the
model; the batcher goes on and the next batches succeed; ``attnserve_execution_failures_total``
counts it. An execution stuck past the model's execution timeout is abandoned: its request
gets UNAVAILABLE, a new instance serves the next ones, and the stuck one is counted until it
returns. Through 10,000 requests failing inside ONNX Runtime (and more failing in the codec)
the server's RSS stays flat and every request is answered. (tests/integration/test_lifecycle.py
covers a corrupt model.onnx and a config that names the wrong input.)

The 10,000 are ``ATTNSERVE_FAULT_REQUESTS`` (default 10000); the figures are printed (-s).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from service.proto.inference import grpc_service_pb2 as pb
from tests.conftest import ServerProcess
from tests.integration.support import (
    ENCODER,
    HOLD_US,
    NOT_SERVING,
    SAGAN,
    SECNN,
    SERVING,
    assert_matches,
    infer_inputs,
    message_of,
    model_stats,
    sample_inputs,
    status_of,
    wait_until_async,
)
from tests.reliability.support import rss_bytes

ODD = "odd_rows"  # the model built below: fails for an odd number of rows


def samples(server: ServerProcess, name: str, **labels: str) -> list[float]:
    """Values of every sample ``name`` whose labels include ``labels`` (empty: no such series)."""
    return [
        s.value
        for family in text_string_to_metric_families(server.metrics_text())
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def health(server: ServerProcess, service: str) -> int:
    with grpc.insecure_channel(server.url) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=30).status


# -- broken files -----------------------------------------------------------------------------------
def test_unparseable_config_and_missing_onnx_are_reported_and_recover(start_server, make_repository, model_repository, reference) -> None:
    repository = make_repository()
    (repository / ENCODER / "config.pbtxt").write_text('name: "transformer_encoder"\nmax_batch_size: 32\ninput [ {{{ oops\n')
    (repository / SAGAN / "1" / "model.onnx").unlink()
    server = start_server(repository=repository)
    rng = np.random.default_rng(60)

    with grpcclient.InferenceServerClient(server.url) as client:
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index[SECNN].state == "READY"
        assert index[ENCODER].state == "UNAVAILABLE" and "config.pbtxt" in index[ENCODER].reason
        assert index[SAGAN].state == "UNAVAILABLE" and "model.onnx" in index[SAGAN].reason
        # The log says which model failed and why, at ERROR.
        for model in (ENCODER, SAGAN):
            line = server.wait_for_log(f"model {model} failed to load")
            assert " ERROR " in line and index[model].reason in line
        # Metrics: the gauge the alert watches reads 0 for each broken model, 1 for the good one.
        assert samples(server, "attnserve_model_ready", model=ENCODER, version="1") == [0.0]
        assert samples(server, "attnserve_model_ready", model=SAGAN, version="1") == [0.0]
        assert samples(server, "attnserve_model_ready", model=SECNN, version="1") == [1.0]
        # Health: the server serves (one good model), the broken models do not.
        assert health(server, "") == SERVING
        assert health(server, SECNN) == SERVING
        assert health(server, ENCODER) == NOT_SERVING and health(server, SAGAN) == NOT_SERVING
        for broken in (ENCODER, SAGAN):
            with pytest.raises(InferenceServerException) as caught:
                client.infer(broken, infer_inputs(sample_inputs(model_repository, broken, 1, rng)))
            assert status_of(caught.value) == "UNAVAILABLE" and index[broken].reason in message_of(caught.value)
        good = sample_inputs(model_repository, SECNN, 3, rng)
        assert_matches(client.infer(SECNN, infer_inputs(good)), reference.run(SECNN, good))

        # Fixed files: RepositoryModelLoad recovers each, and every signal turns green.
        shutil.copyfile(model_repository / ENCODER / "config.pbtxt", repository / ENCODER / "config.pbtxt")
        shutil.copyfile(model_repository / SAGAN / "1" / "model.onnx", repository / SAGAN / "1" / "model.onnx")
        for model in (ENCODER, SAGAN):
            client.load_model(model)
            arrays = sample_inputs(model_repository, model, 2, rng)
            assert_matches(client.infer(model, infer_inputs(arrays)), reference.run(model, arrays))
            assert samples(server, "attnserve_model_ready", model=model, version="1") == [1.0]
            assert health(server, model) == SERVING
        assert {m.state for m in client.get_model_repository_index().models} == {"READY"}


# -- a model that throws at run time ---------------------------------------------------------------
def write_odd_rows_model(folder: Path, *, max_batch_size: int, warmup_rows: int, preferred: tuple[int, ...] = (),
                         delay_us: int = 0) -> Path:
    """``y = x`` for x FP32 [rows, 4], through Reshape(x, [-1, 8]): ONNX Runtime raises for an odd
    number of rows. A real graph failing for some inputs, written with onnx.helper."""
    onnx = pytest.importorskip("onnx", reason="building a test model needs onnx (the export extra)")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "pairs"], ["paired"]),
            helper.make_node("Reshape", ["paired", "rows"], ["y"]),
        ],
        "odd_rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            helper.make_tensor("pairs", TensorProto.INT64, [2], [-1, 8]),
            helper.make_tensor("rows", TensorProto.INT64, [2], [-1, 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    (folder / ODD / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / ODD / "1" / "model.onnx")
    write_odd_rows_config(folder, max_batch_size=max_batch_size, warmup_rows=warmup_rows, preferred=preferred, delay_us=delay_us)
    return folder


def write_odd_rows_config(folder: Path, *, max_batch_size: int, warmup_rows: int, preferred: tuple[int, ...] = (),
                          delay_us: int = 0) -> None:
    sizes = f"preferred_batch_size: [ {', '.join(map(str, preferred))} ]" if preferred else ""
    (folder / ODD / "config.pbtxt").write_text(f"""
name: "{ODD}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
dynamic_batching {{ {sizes} max_queue_delay_microseconds: {delay_us} }}
parameters {{ key: "attnserve.dispatch_when_idle" value {{ string_value: "{'false' if delay_us else 'true'}" }} }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
model_warmup [ {{
  name: "rows" batch_size: {warmup_rows}
  inputs {{ key: "x" value {{ data_type: TYPE_FP32 dims: [ 4 ] random_data: true }} }}
}} ]
""")


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def test_warm_up_failure_is_reported_and_recovers(start_server, make_repository) -> None:
    repository = write_odd_rows_model(make_repository(models=(SECNN,)), max_batch_size=8, warmup_rows=1)
    server = start_server(repository=repository)
    with grpcclient.InferenceServerClient(server.url) as client:
        (row,) = [m for m in client.get_model_repository_index().models if m.name == ODD]
        assert row.state == "UNAVAILABLE" and "warm-up 'rows' (batch size 1) failed" in row.reason
        assert not client.is_model_ready(ODD) and client.is_model_ready(SECNN)
        assert samples(server, "attnserve_model_ready", model=ODD, version="1") == [0.0]
        assert f"model {ODD} failed to load" in server.log

        write_odd_rows_config(repository, max_batch_size=8, warmup_rows=2)
        client.load_model(ODD)
        x = rows(4, 61)
        np.testing.assert_array_equal(client.infer(ODD, [_input(x)], client_timeout=60).as_numpy("y"), x)
        assert samples(server, "attnserve_model_ready", model=ODD, version="1") == [1.0]


def _input(x: np.ndarray, module=grpcclient):
    item = module.InferInput("x", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    return item


async def test_a_failing_batch_fails_only_its_requests(start_server, make_repository, model_repository, reference) -> None:
    """Requests of 3, 2 and 2 rows fill a batch of 7 (max_batch_size), which the graph cannot
    run: those three get INTERNAL with a generic message (the cause is in the log). The same
    batcher then runs the next batch (2 + 2 = 4 rows, a preferred size) correctly, and the other
    model never notices."""
    repository = write_odd_rows_model(
        make_repository(models=(SECNN,)), max_batch_size=7, warmup_rows=2, preferred=(4,), delay_us=HOLD_US)
    server = start_server(repository=repository)
    client = aioclient.InferenceServerClient(server.url)
    try:
        def depth() -> float:
            return server.metric("attnserve_queue_depth", model=ODD)

        doomed = [rows(3, 62), rows(2, 63), rows(2, 64)]
        tasks = []
        for i, x in enumerate(doomed):
            tasks.append(asyncio.create_task(client.infer(ODD, [_input(x, aioclient)], client_timeout=120)))
            if i < 2:  # queued in this order, so the third completes the batch
                await wait_until_async(lambda: depth() == i + 1, what=f"{i + 1} requests queued")
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            assert isinstance(outcome, InferenceServerException), outcome
            assert status_of(outcome) == "INTERNAL"
            # Which model failed, and where to look; never onnxruntime's text.
            assert f"model '{ODD}' version 1: inference failed inside ONNX Runtime" in message_of(outcome)
            assert "details in the server log" in message_of(outcome)
            assert "Reshape" not in message_of(outcome)  # no internals leak to clients
        assert "batch of 7 rows failed" in server.log
        line = server.wait_for_log(f"model '{ODD}' version 1: inference failed inside ONNX Runtime (inputs x [7, 4])")
        assert " ERROR " in line and "Reshape" in line  # ... they are in the log, at ERROR

        # The batcher is still running: the next batch is computed, each request gets its rows.
        good = [rows(2, 65), rows(2, 66)]
        results = await asyncio.gather(*(client.infer(ODD, [_input(x, aioclient)], client_timeout=120) for x in good))
        for x, result in zip(good, results):
            np.testing.assert_array_equal(result.as_numpy("y"), x)
        arrays = sample_inputs(model_repository, SECNN, 3, np.random.default_rng(67))
        assert_matches(await client.infer(SECNN, infer_inputs(arrays, aioclient)), reference.run(SECNN, arrays))
    finally:
        await client.close()

    assert server.metric("attnserve_requests_total", model=ODD, code="INTERNAL") == 3
    assert server.metric("attnserve_execution_failures_total", model=ODD, version="1", reason="error") == 1
    assert server.metric("attnserve_execution_failures_total", model=ODD, reason="timeout") == 0
    assert server.metric("attnserve_requests_total", model=ODD, code="OK") == 2
    assert server.metric("attnserve_model_ready", model=ODD) == 1  # a run-time fault is not a load fault
    with grpcclient.InferenceServerClient(server.url) as sync:
        stats = model_stats(sync, ODD)
        assert (stats.success, stats.fail) == (2, 3)
        assert stats.batch_sizes.get(4) == 1
    assert server.returncode is None


# -- an execution that does not come back in time -------------------------------------------------
SPIN = "spin"  # the model built below: runs a loop as many times as its input says
SPIN_TIMEOUT_S = 0.5
STUCK_S = 3.0  # how long the stuck execution is made to run (about; calibrated on this machine)


def spin_graph():
    """``y = x`` for x FP32 [rows, 4], after a Loop of ``max(spin)`` steps (spin INT64 [rows, 1]),
    each a 32x32 MatMul and Tanh whose result is multiplied by 0 and added to x: a real graph
    whose run time the request chooses, from microseconds to minutes."""
    onnx = pytest.importorskip("onnx", reason="building a test model needs onnx (the export extra)")
    from onnx import TensorProto, helper

    scalar = helper.make_tensor_value_info
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state_in", "half"], ["product"]),
            helper.make_node("Tanh", ["product"], ["state_out"]),
        ],
        "spin_step",
        [scalar("i", TensorProto.INT64, []), scalar("cond_in", TensorProto.BOOL, []),
         scalar("state_in", TensorProto.FLOAT, [32, 32])],
        [scalar("cond_out", TensorProto.BOOL, []), scalar("state_out", TensorProto.FLOAT, [32, 32])],
        initializer=[helper.make_tensor("half", TensorProto.FLOAT, [32, 32], (np.eye(32) * 0.5).ravel().tolist())],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["spin"], ["steps"], keepdims=0),
            helper.make_node("Loop", ["steps", "", "start"], ["state"], body=body),
            helper.make_node("ReduceSum", ["state"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["x", "nothing"], ["y"]),
        ],
        SPIN,
        [scalar("x", TensorProto.FLOAT, ["batch", 4]), scalar("spin", TensorProto.INT64, ["batch", 1])],
        [scalar("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            helper.make_tensor("start", TensorProto.FLOAT, [32, 32], np.ones(32 * 32).tolist()),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def write_spin_model(folder: Path) -> Path:
    import onnx

    (folder / SPIN / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(spin_graph(), folder / SPIN / "1" / "model.onnx")
    (folder / SPIN / "config.pbtxt").write_text(f"""
name: "{SPIN}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "spin" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
dynamic_batching {{ }}
parameters {{ key: "attnserve.execution_timeout_s" value {{ string_value: "{SPIN_TIMEOUT_S}" }} }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
model_warmup [ {{
  name: "no_steps" batch_size: 1
  inputs {{ key: "x" value {{ data_type: TYPE_FP32 dims: [ 4 ] zero_data: true }} }}
  inputs {{ key: "spin" value {{ data_type: TYPE_INT64 dims: [ 1 ] zero_data: true }} }}
}} ]
""")
    return folder


def steps_for(seconds: float) -> int:
    """Loop steps that take about ``seconds`` here: measured on the same graph in this process
    (a calibration, so the stuck execution outlasts the 0.5 s timeout by a wide margin on a fast
    machine and a slow one alike; nothing is asserted on time)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(spin_graph().SerializeToString(), options, providers=["CPUExecutionProvider"])
    probe = 20_000
    started = time.perf_counter()
    session.run(None, {"x": np.zeros((1, 4), np.float32), "spin": np.full((1, 1), probe, np.int64)})
    per_step = (time.perf_counter() - started) / probe
    return max(probe, int(seconds / per_step))


def spin_inputs(x: np.ndarray, steps: int) -> list:
    spin = grpcclient.InferInput("spin", [x.shape[0], 1], "INT64")
    spin.set_data_from_numpy(np.full((x.shape[0], 1), steps, np.int64))
    return [_input(x), spin]


def test_a_stuck_execution_is_abandoned_and_the_model_serves_on(start_server, make_repository) -> None:
    """One instance, execution timeout 0.5 s (config.pbtxt), an execution made to run ~3 s: its
    request gets UNAVAILABLE naming the model and the timeout, the log says so at ERROR, the
    failure and the stuck execution are counted, and a new instance answers the next requests
    while the abandoned one still runs. When ONNX Runtime returns, the gauge goes back to 0."""
    steps = steps_for(STUCK_S)
    server = start_server(repository=write_spin_model(make_repository(models=())))
    with grpcclient.InferenceServerClient(server.url) as client:
        x = rows(2, 70)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(SPIN, spin_inputs(x, steps), client_timeout=60)
        assert status_of(caught.value) == "UNAVAILABLE"  # retryable: another replica may answer
        assert f"model '{SPIN}' version 1: the execution did not finish within its 0.5 s execution timeout" in message_of(caught.value)
        line = server.wait_for_log(f"model '{SPIN}' version 1: an execution has run")
        assert " ERROR " in line and "past its 0.5 s execution timeout" in line and "a new instance replaces it" in line
        assert server.metric("attnserve_execution_failures_total", model=SPIN, reason="timeout") == 1

        # The replacement serves (the abandoned execution is still inside ONNX Runtime, or not:
        # either way these are answered, which is the point).
        for seed in (71, 72, 73):
            y = rows(3, seed)
            np.testing.assert_array_equal(client.infer(SPIN, spin_inputs(y, 10), client_timeout=60).as_numpy("y"), y)

        returned = server.wait_for_log(f"model '{SPIN}' version 1: an abandoned execution returned after", timeout=120)
        assert " WARNING " in returned and "its session is closed" in returned
        assert server.metric("attnserve_stuck_executions", model=SPIN, version="1") == 0
        assert client.is_model_ready(SPIN)
        np.testing.assert_array_equal(client.infer(SPIN, spin_inputs(x, 0), client_timeout=60).as_numpy("y"), x)
    assert server.metric("attnserve_requests_total", model=SPIN, code="UNAVAILABLE") == 1
    assert server.metric("attnserve_requests_total", model=SPIN, code="OK") == 4
    assert server.returncode is None


# -- memory through many failed requests -----------------------------------------------------------
FAULT_REQUESTS = int(os.environ.get("ATTNSERVE_FAULT_REQUESTS", "10000"))
WARMUP_REQUESTS = 1000  # of the same mix, before the baseline RSS
CONCURRENCY = 32
# Bound on RSS growth from after the warm-up to the end: see the test's docstring.
RSS_GROWTH_BYTES = 8 * 1024 * 1024
MiB = 1024 * 1024
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def _wire(rows_: int, *, datatype: str = "FP32", seed: int = 0) -> tuple[bytes, np.ndarray]:
    x = rows(rows_, seed)
    request = pb.ModelInferRequest(model_name=ODD)
    request.inputs.add(name="x", datatype=datatype, shape=[rows_, 4])
    request.raw_input_contents.append(x.astype(np.float64).tobytes() if datatype == "FP64" else x.tobytes())
    return request.SerializeToString(), x


def _mix(count: int) -> list[str]:
    """``count`` requests failing in ONNX Runtime ("graph"), one in ten of that failing in the
    codec ("codec": more rows than max_batch_size, or FP64 for FP32) and one in twenty that
    succeed ("good"), interleaved."""
    kinds = ["graph"] * count + ["codec"] * (count // 10) + ["good"] * (count // 20)
    np.random.default_rng(80).shuffle(kinds)
    return kinds


async def test_memory_stays_flat_through_10000_failed_requests(start_server, make_repository, figures) -> None:
    """odd_rows with max_batch_size 4: a 3-row request always runs alone (3 + 2 > 4) and always
    fails inside ONNX Runtime; 2-row requests run alone or in pairs and succeed. After a warm-up
    of the same mix (allocator pools, gRPC buffers, exception and log paths all exercised), the
    server's RSS is the baseline; after ``FAULT_REQUESTS`` more ONNX Runtime failures it may have
    grown by at most 8 MiB. Measured here (110 MiB process): +3.1 MiB after 10,000 failures and
    +3.1 MiB after 40,000 (ATTNSERVE_FAULT_REQUESTS=40000): the allocator settling once, not a
    leak. 8 MiB allows for that while a leak of even ~1 KiB per failed request (10 MiB) fails. Every request must be answered as its kind says: lost 0."""
    repository = write_odd_rows_model(make_repository(models=()), max_batch_size=4, warmup_rows=2)
    server = start_server(repository=repository)
    graph, _ = _wire(3, seed=81)
    codec = [_wire(5, seed=82)[0], _wire(2, datatype="FP64", seed=83)[0]]
    good, good_x = _wire(2, seed=84)
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []

    async with grpc.aio.insecure_channel(server.url) as channel:
        infer = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString)

        async def one(kind: str, index: int) -> None:
            body = {"graph": graph, "good": good}.get(kind) or codec[index % 2]
            try:
                response = await infer(body, timeout=60)
            except grpc.aio.AioRpcError as error:
                code, details = error.code().name, error.details() or ""
                expected = {"graph": "INTERNAL", "codec": "INVALID_ARGUMENT"}.get(kind)
                if code != expected or (kind == "graph" and f"model '{ODD}' version 1" not in details):
                    wrong.append(f"{kind}: {code} {details[:200]}")
                outcomes[f"{kind} {code}"] += 1
                return
            y = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 4)
            if kind != "good" or not np.array_equal(y, good_x):
                wrong.append(f"{kind}: OK")
            outcomes[f"{kind} OK"] += 1

        async def phase(kinds: list[str]) -> None:
            queue = iter(enumerate(kinds))

            async def worker() -> None:
                for index, kind in queue:
                    await one(kind, index)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        await phase(_mix(WARMUP_REQUESTS))
        before = rss_bytes(server.pid)
        outcomes.clear()
        kinds = _mix(FAULT_REQUESTS)
        started = time.perf_counter()
        await phase(kinds)
        elapsed = time.perf_counter() - started
        after = rss_bytes(server.pid)

    sent = Counter(kinds)
    answered = sum(outcomes.values())
    figures(
        requests=len(kinds), onnxruntime_failures=sent["graph"], codec_failures=sent["codec"], successes=sent["good"],
        lost=len(kinds) - answered, seconds=round(elapsed, 1), rate_rps=round(len(kinds) / elapsed),
        rss_before_mib=round(before / MiB, 1), rss_after_mib=round(after / MiB, 1),
        rss_growth_mib=round((after - before) / MiB, 2), outcomes=dict(outcomes),
    )
    assert not wrong, wrong[:10]
    assert answered == len(kinds)  # lost: 0
    assert outcomes == {"graph INTERNAL": sent["graph"], "codec INVALID_ARGUMENT": sent["codec"], "good OK": sent["good"]}
    assert server.metric("attnserve_execution_failures_total", model=ODD, reason="error") == sent["graph"] + Counter(_mix(WARMUP_REQUESTS))["graph"]
    assert after - before <= RSS_GROWTH_BYTES, (before, after)
    assert server.returncode is None
