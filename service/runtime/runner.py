"""OrtRunner: one model's ONNX Runtime sessions, run in executor threads, never on the event loop.

``instances`` sessions (Triton's instance_group count) wait in a pool; a dedicated thread pool
of the same size takes one session per execution, so at most ``instances`` executions run at
once and each owns its session while it runs. Each execution is timed in three parts, reported
to a :class:`ComputeObserver` as Triton's compute_input / compute_infer / compute_output:

- input: dtype and contiguity checks; on CUDA also the host-to-device copy;
- infer: the graph run;
- output: on CUDA the device-to-host copy; on CPU only collecting the arrays by name.

On CPU the plain ``session.run`` is used: onnxruntime wraps the numpy inputs without a copy and
the outputs come back as numpy arrays, so IOBinding saves nothing (measured: 53 us for ``run``
against 60 us for bind + ``run_with_iobinding`` on a small MatMul). On CUDA, IOBinding with
both ends on the device lets the copies be timed apart from the kernels and lets onnxruntime
allocate outputs whose shape is only known after the run.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from service.errors import InternalError, ModelLoadError, ModelNotReady
from service.runtime.meta import TensorMeta, read_meta
from service.runtime.providers import CUDA_EP, execution_providers, resolve_provider
from service.runtime.session import open_session, session_options

log = logging.getLogger(__name__)


class ComputeObserver(Protocol):
    def compute(self, input_s: float, infer_s: float, output_s: float) -> None:
        """One execution's input preparation, graph run and output copy, in seconds."""


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
    ) -> None:
        """Creates the sessions (blocking, seconds for a large model: call it off the event loop).

        ``provider`` is auto, cpu or cuda (see :mod:`service.runtime.providers`). ``name``
        labels the executor threads ("ort-<name>_0"); it defaults to the file's model folder.
        """
        if instances < 1:
            raise ModelLoadError(f"instances must be >= 1, got {instances}")
        self.model_path = model_path
        self.device_id = device_id
        self._observer = observer
        self.provider = resolve_provider(provider)
        sessions = self._open_sessions(provider, instances, max(1, intra_op_threads))
        self.providers: tuple[str, ...] = tuple(sessions[0].get_providers())
        self.input_meta: tuple[TensorMeta, ...] = read_meta(sessions[0].get_inputs(), "input")
        self.output_meta: tuple[TensorMeta, ...] = read_meta(sessions[0].get_outputs(), "output")
        self._inputs = {m.name: m for m in self.input_meta}
        self._output_names = [m.name for m in self.output_meta]

        self._sessions = sessions
        self._idle: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
        for session in sessions:
            self._idle.put(session)
        label = name or (model_path.parent.parent.name or model_path.stem)
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"ort-{label}")
        self._closed = False
        log.info(
            "loaded %s: %d instance(s) on %s, %d intra-op thread(s) each",
            model_path, instances, self.providers[0], max(1, intra_op_threads),
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
        """Runs one execution in an executor thread; returns every graph output by name."""
        if self._closed:
            raise ModelNotReady("model is unloading")
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, self._execute, inputs)
        except RuntimeError as exc:  # the executor shut down between the check and the submit
            raise ModelNotReady("model is unloading") from exc
        outputs, timing = await future
        # Reported here, on the loop and in the caller's task, not from the worker thread:
        # observers then see this call between the batcher's batch_started and batch_finished
        # of the same execution and need no locking of their own.
        if self._observer is not None:
            self._observer.compute(timing.input_s, timing.infer_s, timing.output_s)
        return outputs

    def _execute(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], _Timing]:
        session = self._idle.get()
        try:
            t0 = time.perf_counter()
            feeds = self._prepare(inputs)
            if self.provider == "cuda":
                return self._execute_cuda(session, feeds, t0)
            t1 = time.perf_counter()
            try:
                arrays = session.run(self._output_names, feeds)
            except Exception as exc:
                raise self._internal(exc) from exc
            t2 = time.perf_counter()
            outputs = dict(zip(self._output_names, arrays))
            t3 = time.perf_counter()
            return outputs, _Timing(t1 - t0, t2 - t1, t3 - t2)
        finally:
            self._idle.put(session)

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
            session.run_with_iobinding(binding)
            t2 = time.perf_counter()
            arrays = binding.copy_outputs_to_cpu()
            t3 = time.perf_counter()
        except Exception as exc:
            raise self._internal(exc) from exc
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
        log.error("inference refused for %s: %s", self.model_path, detail)
        return InternalError("inference failed")

    def _internal(self, exc: BaseException) -> InternalError:
        # Shape errors from onnxruntime land here too: the codec checks shapes before this layer,
        # so one reaching the graph is our fault, not the client's.
        log.error("inference failed for %s: %s", self.model_path, exc, exc_info=exc)
        return InternalError("inference failed")

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Waits for executions in flight, stops the threads and drops the sessions.

        Blocks while an execution finishes; the repository drains the batcher first, and from
        the event loop it belongs in ``asyncio.to_thread``. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        while not self._idle.empty():
            self._idle.get_nowait()
        self._sessions.clear()

    @property
    def closed(self) -> bool:
        return self._closed
