"""Faults: broken model files and a model that throws at run time.

A model whose files are broken (config.pbtxt that does not parse, a version folder without its
model.onnx, a graph that fails during warm-up) is reported not ready with a reason, in the
repository index, in the log, in health and in ``attnserve_model_ready``, while the other
models keep serving; RepositoryModelLoad brings it back once the files are fixed. A graph that
fails for some batches fails exactly the requests of those batches with INTERNAL; the batcher
goes on and the next batches succeed. (tests/integration/test_lifecycle.py covers a corrupt
model.onnx and a config that names the wrong input.)
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

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
            assert "details in the server log" in message_of(outcome)
            assert "Reshape" not in message_of(outcome)  # no internals leak to clients
        assert "batch of 7 rows failed" in server.log
        assert "Reshape" in server.log  # ... they are in the log

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
    assert server.metric("attnserve_requests_total", model=ODD, code="OK") == 2
    assert server.metric("attnserve_model_ready", model=ODD) == 1  # a run-time fault is not a load fault
    with grpcclient.InferenceServerClient(server.url) as sync:
        stats = model_stats(sync, ODD)
        assert (stats.success, stats.fail) == (2, 3)
        assert stats.batch_sizes.get(4) == 1
    assert server.returncode is None
