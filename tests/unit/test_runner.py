"""OrtRunner against tiny ONNX graphs built here with onnx.helper (no exported models needed)."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from service.errors import InternalError, ModelLoadError, ModelNotReady
from service.runtime import OrtRunner, default_intra_op_threads, resolve_provider
from service.runtime.providers import cuda_provider_options, execution_providers, model_provider
from service.runtime.session import session_options

# Guards against a hang if concurrency is broken; the tests never wait this long when it works.
GUARD_S = 30.0


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def affine_model(tmp_path: Path) -> Path:
    """Y = X * 2 + 1, X float32 [batch, 3]."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "two"], ["T"]), helper.make_node("Add", ["T", "one"], ["Y"])],
        "affine",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])],
        [two, one],
    )
    return _save(graph, tmp_path / "affine.onnx")


@pytest.fixture
def two_output_model(tmp_path: Path) -> Path:
    """sum = A + B (float32), idx = ArgMax(A, axis 1) (int64)."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["A", "B"], ["sum"]),
            helper.make_node("ArgMax", ["A"], ["idx"], axis=1, keepdims=0),
        ],
        "two_outputs",
        [
            helper.make_tensor_value_info("A", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("B", TensorProto.FLOAT, ["n", 4]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"]),
        ],
    )
    return _save(graph, tmp_path / "two.onnx")


def _runner(path: Path, *, instances: int = 1, observer: object = None) -> OrtRunner:
    return OrtRunner(path, provider="cpu", instances=instances, intra_op_threads=1, observer=observer)


class RecordingObserver:
    def __init__(self) -> None:
        self.calls: list[tuple[float, float, float]] = []
        self.threads: list[threading.Thread] = []
        self.failures: list[str] = []

    def compute(self, input_s: float, infer_s: float, output_s: float) -> None:
        self.calls.append((input_s, infer_s, output_s))
        self.threads.append(threading.current_thread())

    def execution_failed(self, reason: str) -> None:
        self.failures.append(reason)

    def stuck_executions(self, count: int) -> None:
        pass


class GatedInputs(dict):
    """Feeds that hold the executing thread inside run() until the test says go.

    The runner reads the feeds in its worker thread, so ``items()`` runs there: it records the
    thread, reports that the execution has started and waits for ``gate`` (an Event or Barrier).
    """

    def __init__(self, feeds: dict[str, np.ndarray], gate: threading.Event | threading.Barrier) -> None:
        super().__init__(feeds)
        self.gate = gate
        self.entered = threading.Event()
        self.thread: threading.Thread | None = None

    def items(self):  # type: ignore[override]
        self.thread = threading.current_thread()
        self.entered.set()
        if isinstance(self.gate, threading.Barrier):
            self.gate.wait(timeout=GUARD_S)
        else:
            assert self.gate.wait(timeout=GUARD_S)
        return super().items()


# -- results ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 8, 64])
async def test_affine_results_at_several_batch_sizes(affine_model: Path, batch: int) -> None:
    runner = _runner(affine_model)
    try:
        x = np.random.default_rng(batch).standard_normal((batch, 3)).astype(np.float32)
        out = await runner.run({"X": x})
        assert list(out) == ["Y"]
        assert out["Y"].shape == (batch, 3)
        np.testing.assert_allclose(out["Y"], x * 2 + 1, rtol=1e-6)
    finally:
        runner.close()


async def test_every_output_is_returned_by_name(two_output_model: Path) -> None:
    runner = _runner(two_output_model)
    try:
        a = np.array([[0, 5, 1, 2], [9, 0, 0, 1]], dtype=np.float32)
        b = np.ones((2, 4), dtype=np.float32)
        out = await runner.run({"A": a, "B": b})
        assert set(out) == {"sum", "idx"}
        np.testing.assert_array_equal(out["sum"], a + b)
        assert out["idx"].dtype == np.int64
        np.testing.assert_array_equal(out["idx"], [1, 0])
    finally:
        runner.close()


async def test_non_contiguous_input_is_read_in_logical_order(affine_model: Path) -> None:
    runner = _runner(affine_model)
    try:
        x = np.arange(12, dtype=np.float32).reshape(3, 4)[:, :3]  # a strided view
        assert not x.flags.c_contiguous
        out = await runner.run({"X": x})
        np.testing.assert_array_equal(out["Y"], x * 2 + 1)
    finally:
        runner.close()


def test_meta_describes_the_graph(two_output_model: Path) -> None:
    runner = _runner(two_output_model)
    try:
        assert [(m.name, m.dtype, m.shape) for m in runner.input_meta] == [
            ("A", np.dtype(np.float32), ("n", 4)),
            ("B", np.dtype(np.float32), ("n", 4)),
        ]
        assert [(m.name, m.dtype, m.shape) for m in runner.output_meta] == [
            ("sum", np.dtype(np.float32), ("n", 4)),
            ("idx", np.dtype(np.int64), ("n",)),
        ]
    finally:
        runner.close()


# -- observer and threads -----------------------------------------------------------------


async def test_observer_gets_three_durations_per_run_on_the_loop_thread(affine_model: Path) -> None:
    observer = RecordingObserver()
    runner = _runner(affine_model, observer=observer)
    try:
        for batch in (1, 2, 5):
            await runner.run({"X": np.ones((batch, 3), np.float32)})
        assert len(observer.calls) == 3
        for call in observer.calls:
            assert len(call) == 3 and all(isinstance(d, float) and d >= 0.0 for d in call)
        assert observer.threads == [threading.current_thread()] * 3
    finally:
        runner.close()


async def test_run_does_not_block_the_event_loop(affine_model: Path) -> None:
    runner = _runner(affine_model)
    try:
        release = threading.Event()
        inputs = GatedInputs({"X": np.ones((2, 3), np.float32)}, release)
        task = asyncio.create_task(runner.run(inputs))
        assert await asyncio.to_thread(inputs.entered.wait, GUARD_S)

        # The execution is parked in its worker thread; the loop still runs other coroutines.
        progressed = asyncio.Event()

        async def other() -> None:
            progressed.set()

        await asyncio.create_task(other())
        assert progressed.is_set() and not task.done()

        release.set()
        out = await task
        np.testing.assert_array_equal(out["Y"], np.full((2, 3), 3.0, np.float32))
        assert inputs.thread is not threading.current_thread()
        assert inputs.thread is not None and inputs.thread.name.startswith("ort-")
    finally:
        runner.close()


async def test_two_instances_run_two_executions_at_once(affine_model: Path) -> None:
    runner = _runner(affine_model, instances=2)
    try:
        # Neither execution can pass the barrier until the other one is inside run() too.
        both_in = threading.Barrier(2)
        first = GatedInputs({"X": np.zeros((1, 3), np.float32)}, both_in)
        second = GatedInputs({"X": np.ones((4, 3), np.float32)}, both_in)
        out1, out2 = await asyncio.gather(runner.run(first), runner.run(second))
        np.testing.assert_array_equal(out1["Y"], np.ones((1, 3), np.float32))
        np.testing.assert_array_equal(out2["Y"], np.full((4, 3), 3.0, np.float32))
        assert first.thread is not second.thread
        assert not both_in.broken
    finally:
        runner.close()


# -- errors -------------------------------------------------------------------------------


async def test_onnxruntime_failure_is_internal_error_naming_the_model(tmp_path: Path, affine_model: Path) -> None:
    """The message names model and version (the folder above the file), never onnxruntime's
    text; the cause is chained and logged; the failure is counted; the session serves on."""
    (tmp_path / "affine" / "2").mkdir(parents=True)
    path = affine_model.rename(tmp_path / "affine" / "2" / "model.onnx")
    observer = RecordingObserver()
    runner = OrtRunner(path, provider="cpu", instances=1, intra_op_threads=1, observer=observer)
    try:
        with pytest.raises(InternalError) as info:
            await runner.run({"X": np.ones((2, 5), np.float32)})  # dim 1 is fixed at 3
        assert info.value.message == "model 'affine' version 2: inference failed inside ONNX Runtime"
        assert info.value.__cause__ is not None
        assert observer.failures == ["error"]
        out = await runner.run({"X": np.ones((2, 3), np.float32)})
        np.testing.assert_array_equal(out["Y"], np.full((2, 3), 3.0, np.float32))
    finally:
        runner.close()


async def test_wrong_dtype_or_names_is_internal_error(affine_model: Path) -> None:
    runner = _runner(affine_model)
    try:
        with pytest.raises(InternalError):
            await runner.run({"X": np.ones((2, 3), np.float64)})
        with pytest.raises(InternalError):
            await runner.run({"Z": np.ones((2, 3), np.float32)})
    finally:
        runner.close()


def test_corrupt_onnx_file_is_model_load_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"this is not a protobuf \x00\x01\x02")
    with pytest.raises(ModelLoadError) as info:
        _runner(path)
    assert str(path) in info.value.message


def test_missing_onnx_file_is_model_load_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelLoadError, match="does not exist"):
        _runner(path)


def test_unsupported_boundary_type_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["H"], ["O"])],
        "bf16",
        [helper.make_tensor_value_info("H", TensorProto.BFLOAT16, [2])],
        [helper.make_tensor_value_info("O", TensorProto.BFLOAT16, [2])],
    )
    with pytest.raises(ModelLoadError, match="'H'"):
        _runner(_save(graph, tmp_path / "bf16.onnx"))


async def test_run_after_close_is_not_ready(affine_model: Path) -> None:
    runner = _runner(affine_model)
    runner.close()
    runner.close()  # idempotent
    assert runner.closed
    with pytest.raises(ModelNotReady):
        await runner.run({"X": np.ones((1, 3), np.float32)})


# -- providers and options ----------------------------------------------------------------


def test_auto_falls_back_to_cpu_with_one_log_line(affine_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.runtime.providers"):
        runner = OrtRunner(affine_model, provider="auto", instances=2, intra_op_threads=1)
    try:
        assert runner.provider == "cpu"
        assert runner.providers == ("CPUExecutionProvider",)
        lines = [r for r in caplog.records if r.name == "service.runtime.providers"]
        assert len(lines) == 1
        assert lines[0].levelno == logging.INFO
        assert "CUDA not available" in lines[0].getMessage()
        assert "serving on CPU" in lines[0].getMessage()
    finally:
        runner.close()


def test_cuda_without_cuda_is_model_load_error(affine_model: Path) -> None:
    with pytest.raises(ModelLoadError, match="CUDAExecutionProvider"):
        OrtRunner(affine_model, provider="cuda", instances=1, intra_op_threads=1)


def test_resolve_provider_uses_cuda_when_offered() -> None:
    offered = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_provider("auto", offered) == "cuda"
    assert resolve_provider("cuda", offered) == "cuda"
    assert resolve_provider("cpu", offered) == "cpu"
    with pytest.raises(ModelLoadError):
        resolve_provider("tpu", offered)


@pytest.mark.parametrize(
    "server, kind, expected",
    [
        ("cuda", "KIND_GPU", "cuda"),
        ("cuda", "KIND_AUTO", "cuda"),
        ("cuda", "KIND_CPU", "cpu"),  # Triton's rule: KIND_CPU stays on CPU on a GPU server
        ("cpu", "KIND_CPU", "cpu"),
        ("cpu", "KIND_AUTO", "cpu"),
        ("cpu", "KIND_GPU", "cpu"),  # the GPU image's repository still serves on a CPU replica
    ],
)
def test_instance_kind_narrows_the_server_provider(server, kind, expected, caplog) -> None:
    with caplog.at_level("INFO", logger="service.runtime.providers"):
        assert model_provider(server, kind, "m") == expected
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert bool(warned) == (server == "cpu" and kind == "KIND_GPU")


def test_cuda_provider_list_keeps_cpu_for_unsupported_nodes() -> None:
    providers = execution_providers("cuda", device_id=1)
    assert [name for name, _ in providers] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers[0][1] == cuda_provider_options(1)
    assert cuda_provider_options(1)["device_id"] == "1"
    assert cuda_provider_options(0)["cudnn_conv_algo_search"] == "HEURISTIC"
    assert cuda_provider_options(0)["arena_extend_strategy"] == "kSameAsRequested"


def test_session_options_do_not_spin_and_run_one_graph_sequentially() -> None:
    options = session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.enable_mem_pattern


@pytest.mark.parametrize(
    ("instances", "cores", "expected"), [(1, 8, 8), (2, 8, 4), (3, 8, 2), (4, 2, 1), (16, 2, 1)]
)
def test_default_intra_op_threads_shares_the_cores(instances: int, cores: int, expected: int) -> None:
    assert default_intra_op_threads(instances, cores=cores) == expected
