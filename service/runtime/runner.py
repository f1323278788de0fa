"""OrtRunner: one model's ONNX Runtime sessions, run in worker threads, never on the event loop.

``instances`` sessions (Triton's instance_group count) each belong to one worker thread of an
:class:`~service.runtime.instances.InstancePool`, so at most ``instances`` executions run at
once and each owns its session while it runs. The pool also enforces the execution timeout:
an execution past it is abandoned and its instance replaced (see instances.py). Each execution
is timed in three parts, reported to a :class:`ComputeObserver` as Triton's compute_input /
compute_infer / compute_output:

- input: dtype and contiguity checks; on CUDA also the host-to-device copy;
- infer: the graph run;
- output: on CUDA the device-to-host copy; on CPU only collecting the arrays by name.

On CPU the plain ``session.run`` is used: onnxruntime wraps the numpy inputs without a copy and
the outputs come back as numpy arrays, so IOBinding saves nothing (measured: 53 us for ``run``
against 60 us for bind + ``run_with_iobinding`` on a small MatMul). On CUDA, IOBinding with
both ends on the device lets the copies be timed apart from the kernels and lets onnxruntime
allocate outputs whose shape is only known after the run.

A graph that raises fails only that execution: InternalError naming the model and version goes
to the callers, the cause to the log (one ERROR line), and the count to
``attnserve_execution_failures_total{reason="error"}``; the session serves the next execution.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from service.errors import InternalError, ModelLoadError
from service.runtime.instances import InstancePool
from service.runtime.meta import TensorMeta, read_meta
from service.runtime.providers import CUDA_EP, execution_providers, resolve_provider
from service.runtime.session import open_session, session_options

log = logging.getLogger(__name__)


class ComputeObserver(Protocol):
    def compute(self, input_s: float, infer_s: float, output_s: float) -> None:
        """One execution's input preparation, graph run and output copy, in seconds."""

    def execution_failed(self, reason: str) -> None:
        """One execution failed: "error" (the graph raised) or "timeout" (abandoned)."""

    def stuck_executions(self, count: int) -> None:
        """Abandoned executions still inside ONNX Runtime (called from any thread)."""


@dataclass(frozen=True)
class _Timing:
    input_s: float
    infer_s: float
    output_s: float


class OrtRunner:
    def __init__(
        self,
        model_path: Path,
        *,
        provider: str,
        instances: int,
        intra_op_threads: int,
        device_id: int = 0,
        observer: ComputeObserver | None = None,
        name: str | None = None,
        execution_timeout_s: float | None = None,
    ) -> None:
        """Creates the sessions (blocking, seconds for a large model: call it off the event loop).

        ``provider`` is auto, cpu or cuda (see :mod:`service.runtime.providers`). ``name``
        names the model in error messages and labels the worker threads ("ort-<name>_0"); it
        defaults to the file's model folder, and the version is the folder above the file.
        ``execution_timeout_s`` (None: no limit) bounds one execution; see instances.py.
        """
        if instances < 1:
            raise ModelLoadError(f"instances must be >= 1, got {instances}")
        self.model_path = model_path
        self.device_id = device_id
        self._observer = observer
        self.provider = resolve_provider(provider)
        threads = max(1, intra_op_threads)
        sessions = self._open_sessions(provider, instances, threads)
        self.providers: tuple[str, ...] = tuple(sessions[0].get_providers())
        self.input_meta: tuple[TensorMeta, ...] = read_meta(sessions[0].get_inputs(), "input")
        self.output_meta: tuple[TensorMeta, ...] = read_meta(sessions[0].get_outputs(), "output")
        self._inputs = {m.name: m for m in self.input_meta}
        self._output_names = [m.name for m in self.output_meta]

        self.name = name or (model_path.parent.parent.name or model_path.stem)
        self.version = model_path.parent.name if model_path.parent.name.isdigit() else ""
        self._what = f"model '{self.name}'" + (f" version {self.version}" if self.version else "")
        # A replacement for a stuck instance opens its session the same way (in its own thread).
        options, providers = session_options(threads), execution_providers(self.provider, device_id)
        self._pool: InstancePool[ort.InferenceSession, tuple[dict[str, np.ndarray], _Timing]] = InstancePool(
            sessions,
            execute=self._execute,
            open_session=lambda: open_session(model_path, options, providers),
            name=self.name,
            version=self.version,
            timeout_s=execution_timeout_s,
            observer=_StuckReport(observer) if observer is not None else None,
        )
        # onnxruntime prints a failing node's error to stderr itself, then raises it; _internal
        # logs the raised one (naming the model), so the print is turned off for runs.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4  # fatal only
        self._closed = False
        log.info(
            "loaded %s: %d instance(s) on %s, %d intra-op thread(s) each, execution timeout %s",
            model_path, instances, self.providers[0], threads,
            f"{execution_timeout_s:g} s" if execution_timeout_s else "off",
        )

    def _open_sessions(self, setting: str, instances: int, threads: int) -> list[ort.InferenceSession]:
        options = session_options(threads)
        providers = execution_providers(self.provider, self.device_id)
        sessions = [open_session(self.model_path, options, providers) for _ in range(instances)]
        if self.provider == "cuda" and CUDA_EP not in sessions[0].get_providers():
            # onnxruntime falls back to CPU by itself when the CUDA EP is listed but cannot start
            # (missing libcudnn, driver too old); it only logs. Say so, or refuse when cuda was
            # demanded rather than serving at a tenth of the expected speed.
            if setting == "cuda":
                raise ModelLoadError(
                    f"{self.model_path}: {CUDA_EP} is installed but failed to start "
                    "(check the CUDA/cuDNN libraries and the driver); refusing to serve on CPU"
                )
            log.warning("%s failed to start for %s; serving on CPU", CUDA_EP, self.model_path)
            self.provider = "cpu"
        return sessions

    # -- running ---------------------------------------------------------------------------
    async def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one execution in a worker thread; returns every graph output by name.

        Raises InternalError when the graph fails, ExecutionTimeout when the execution was
        abandoned past the timeout, ModelNotReady when closed or every instance is stuck.
        """
        try:
            outputs, timing = await self._pool.run(inputs)
        except InternalError:
            if self._observer is not None:
                self._observer.execution_failed("error")
            raise
        # Reported here, on the loop and in the caller's task, not from the worker thread:
        # observers then see this call between the batcher's batch_started and batch_finished
        # of the same execution and need no locking of their own.
        if self._observer is not None:
            self._observer.compute(timing.input_s, timing.infer_s, timing.output_s)
        return outputs

    def _execute(
        self, session: ort.InferenceSession, inputs: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], _Timing]:
        """In a worker thread, on that instance's own session."""
        t0 = time.perf_counter()
        feeds = self._prepare(inputs)
        if self.provider == "cuda":
            return self._execute_cuda(session, feeds, t0)
        t1 = time.perf_counter()
        try:
            arrays = session.run(self._output_names, feeds, self._run_options)
        except Exception as exc:
            raise self._internal(exc, feeds) from exc
        t2 = time.perf_counter()
        outputs = dict(zip(self._output_names, arrays))
        t3 = time.perf_counter()
        return outputs, _Timing(t1 - t0, t2 - t1, t3 - t2)

    def _execute_cuda(
        self, session: ort.InferenceSession, feeds: dict[str, np.ndarray], t0: float
    ) -> tuple[dict[str, np.ndarray], _Timing]:
        try:
            binding = session.io_binding()
            for name, array in feeds.items():
                if array.dtype == np.object_:  # strings live on the host in every provider
                    binding.bind_cpu_input(name, array)
                else:
                    # A synchronous host-to-device copy now, so it is timed as input, not infer.
                    value = ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)
                    binding.bind_ortvalue_input(name, value)
            for name in self._output_names:
                # Left on the device and allocated by onnxruntime: the shape may depend on the
                # batch, and the copy back is then timed as output below.
                binding.bind_output(name, "cuda", self.device_id)
            t1 = time.perf_counter()
            # Returns after the CUDA stream is synchronised, so t2 - t1 is the kernels' time.
            session.run_with_iobinding(binding, self._run_options)
            t2 = time.perf_counter()
            arrays = binding.copy_outputs_to_cpu()
            t3 = time.perf_counter()
        except Exception as exc:
            raise self._internal(exc, feeds) from exc
        return dict(zip(self._output_names, arrays)), _Timing(t1 - t0, t2 - t1, t3 - t2)

    def _prepare(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The codec has validated names, dtypes and shapes; a mismatch here is a server bug."""
        if inputs.keys() != self._inputs.keys():
            raise self._bug(f"inputs {sorted(inputs)} do not match the graph's {sorted(self._inputs)}")
        feeds = {}
        for name, array in inputs.items():
            want = self._inputs[name].dtype
            if array.dtype != want:
                raise self._bug(f"input {name!r} is {array.dtype}, the graph wants {want}")
            # onnxruntime reads the buffer as C-ordered; a transposed view would be misread.
            feeds[name] = np.ascontiguousarray(array)
        return feeds

    def _bug(self, detail: str) -> InternalError:
        log.error("%s: inference refused before ONNX Runtime: %s", self._what, detail)
        return InternalError(f"{self._what}: inference failed")

    def _internal(self, exc: BaseException, feeds: dict[str, np.ndarray]) -> InternalError:
        # Shape errors from onnxruntime land here too: the codec checks shapes before this layer,
        # so one reaching the graph is our fault, not the client's. One line, no traceback: the
        # Python frames are always this method's caller, and a model failing every batch would
        # otherwise write a screenful per batch; onnxruntime's message names the node.
        shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in feeds.items())
        log.error("%s: inference failed inside ONNX Runtime (inputs %s): %s", self._what, shapes, str(exc).strip())
        return InternalError(f"{self._what}: inference failed inside ONNX Runtime")

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Waits for executions in flight, stops the threads and drops the sessions.

        Blocks while an execution finishes (abandoned ones are not waited for); the repository
        drains the batcher first, and from the event loop it belongs in ``asyncio.to_thread``.
        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._pool.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stuck_executions(self) -> int:
        """Abandoned executions still inside ONNX Runtime."""
        return self._pool.stuck


class _StuckReport:
    """The pool's two events, told to the runner's observer in its terms."""

    __slots__ = ("_observer",)

    def __init__(self, observer: ComputeObserver) -> None:
        self._observer = observer

    def execution_timed_out(self) -> None:
        self._observer.execution_failed("timeout")

    def stuck_executions(self, count: int) -> None:
        self._observer.stuck_executions(count)
