"""InstancePool: one worker thread per ONNX Runtime session, and what happens when one is stuck.

Each instance (Triton's instance_group count) is a daemon thread that owns one session and takes
executions from one queue, so at most ``instances`` executions run at once and each has its
session to itself. Callers ``await run(inputs)`` on the event loop; the result comes back
through an asyncio future set with ``call_soon_threadsafe``.

A thread inside ``session.run`` cannot be stopped from Python. With an execution timeout set,
an execution still running after it is *abandoned*: its callers get :class:`ExecutionTimeout`
at once, an ERROR line names the model and the time, and a fresh instance (a new thread that
opens a new session) takes its place, so the model keeps serving. The stuck thread keeps its
session until ONNX Runtime returns; then it rejoins the pool if an instance is missing, or
closes its session and ends. At most ``max_stuck`` abandoned executions may be outstanding (each
holds a session's memory and possibly cores): past that no replacement is opened, and once no
instance is left the model refuses work with :class:`ModelNotReady` until one comes back.

Threads are daemons: a process that exits while an execution is stuck does not wait for it
(``concurrent.futures`` joins its worker threads at exit, which would hang the exit forever).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any, Callable, Generic, Protocol, TypeVar

from service.errors import ExecutionTimeout, ModelNotReady

log = logging.getLogger(__name__)

S = TypeVar("S")  # a session
R = TypeVar("R")  # what one execution returns

# Job states. A job is moved out of QUEUED by exactly one side, under the pool's lock.
_QUEUED, _RUNNING, _DONE, _DROPPED, _ABANDONED = range(5)


class StuckObserver(Protocol):
    def execution_timed_out(self) -> None:
        """An execution passed its timeout and was abandoned."""

    def stuck_executions(self, count: int) -> None:
        """Abandoned executions whose thread has not returned yet (any thread may call this)."""


class _Worker(Generic[S]):
    __slots__ = ("session", "thread", "abandoned")

    def __init__(self, session: S | None) -> None:
        self.session = session  # None: the thread opens its own (a replacement)
        self.thread: threading.Thread | None = None
        self.abandoned = False


class _Job:
    __slots__ = ("inputs", "future", "loop", "state", "started_at", "worker", "timer")

    def __init__(self, inputs: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.inputs = inputs
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.state = _QUEUED
        self.started_at = 0.0
        self.worker: _Worker[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None


class InstancePool(Generic[S, R]):
    def __init__(
        self,
        sessions: list[S],
        *,
        execute: Callable[[S, Any], R],
        open_session: Callable[[], S],
        name: str,
        version: str = "",
        timeout_s: float | None = None,
        max_stuck: int | None = None,
        observer: StuckObserver | None = None,
    ) -> None:
        """Starts one thread per session. ``name`` (the model's) and ``version`` go into messages
        and thread names ("ort-<name>_<n>"); ``max_stuck`` defaults to the number of instances."""
        if not sessions:
            raise ValueError("an instance pool needs at least one session")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        self._execute = execute
        self._open_session = open_session
        self._name = name
        self._what = f"model '{name}'" + (f" version {version}" if version else "")
        self._timeout_s = timeout_s
        self._target = len(sessions)
        self._max_stuck = len(sessions) if max_stuck is None else max_stuck
        self._observer = observer
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers: list[_Worker[S]] = []  # every thread started, for close()
        self._live = 0  # instances taking work (or opening a session to do so)
        self._stuck = 0  # abandoned executions whose thread has not returned
        self._closed = False
        with self._lock:
            for session in sessions:
                self._spawn(session)

    @property
    def timeout_s(self) -> float | None:
        return self._timeout_s

    @property
    def stuck(self) -> int:
        return self._stuck

    @property
    def live(self) -> int:
        return self._live

    # -- callers (event loop) ---------------------------------------------------------------
    async def run(self, inputs: Any) -> R:
        """One execution on the next free instance; raises what ``execute`` raised, or
        ExecutionTimeout, or ModelNotReady when the pool is closed or every instance is stuck."""
        if self._closed:
            raise ModelNotReady("model is unloading")
        if not self._live:
            raise self._all_stuck()
        loop = asyncio.get_running_loop()
        job = _Job(inputs, loop)
        self._jobs.put(job)
        if self._timeout_s is not None:
            job.timer = loop.call_later(self._timeout_s, self._check, job)
        try:
            return await job.future
        except asyncio.CancelledError:
            # The caller went away: a job still queued is skipped; a running one finishes.
            with self._lock:
                if job.state == _QUEUED:
                    job.state = _DROPPED
            raise
        finally:
            if job.timer is not None:
                job.timer.cancel()
            # An exception raised here has this frame in its traceback and is held by
            # job.future: without this the two form a cycle, and every failed execution's
            # inputs would wait for the garbage collector instead of going at once.
            job = None  # type: ignore[assignment]

    def _check(self, job: _Job) -> None:
        """The timeout timer fired (on the loop). The clock starts when a thread takes the job,
        so time spent waiting for an instance that is being replaced does not count."""
        job.timer = None
        if job.future.done():
            return
        now = time.monotonic()
        with self._lock:
            if job.state == _RUNNING and now - job.started_at >= self._timeout_s:  # type: ignore[operator]
                worker = job.worker
                assert worker is not None
                job.state = _ABANDONED
                worker.abandoned = True
                self._live -= 1
                self._stuck += 1
                stuck, replaced = self._stuck, False
                if self._stuck <= self._max_stuck and not self._closed:
                    self._spawn(None)
                    replaced = True
                orphans = self._take_queued() if not self._live else []
            elif job.state in (_QUEUED, _RUNNING):
                started = job.started_at if job.state == _RUNNING else now
                job.timer = job.loop.call_later(started + self._timeout_s - now, self._check, job)  # type: ignore[operator]
                return
            else:
                return  # finished: its result is already on its way to the loop
        elapsed = now - job.started_at
        log.error(
            "%s: an execution has run %.1f s, past its %g s execution timeout; %s "
            "(%d abandoned execution(s) not yet returned)",
            self._what, elapsed, self._timeout_s,
            "it is abandoned and a new instance replaces it" if replaced
            else f"it is abandoned; no replacement (at most {self._max_stuck} may be stuck)",
            stuck,
        )
        if self._observer is not None:
            self._observer.execution_timed_out()
            self._observer.stuck_executions(stuck)
        job.future.set_exception(
            ExecutionTimeout(
                f"{self._what}: the execution did not finish within its {self._timeout_s:g} s "
                "execution timeout and was abandoned; retry the request"
            )
        )
        if orphans:
            error = self._all_stuck()
            for orphan in orphans:
                _settle(orphan.future, None, error)

    def _all_stuck(self) -> ModelNotReady:
        return ModelNotReady(
            f"{self._what} is not serving: {self._stuck} execution(s) are stuck past the "
            f"{self._timeout_s:g} s execution timeout and no instance is free until one returns"
        )

    # -- instances (worker threads) ---------------------------------------------------------
    def _spawn(self, session: S | None) -> None:
        """Start one instance; the caller holds the lock."""
        worker: _Worker[S] = _Worker(session)
        index = len(self._workers)
        worker.thread = threading.Thread(
            target=self._work, args=(worker,), name=f"ort-{self._name}_{index}", daemon=True
        )
        self._workers.append(worker)
        self._live += 1
        worker.thread.start()

    def _work(self, worker: _Worker[S]) -> None:
        if worker.session is None and not self._open_replacement(worker):
            return
        jobs, lock = self._jobs, self._lock
        while True:
            job = jobs.get()
            if job is None:  # close(): one sentinel per instance
                return
            with lock:
                if job.state != _QUEUED:
                    continue  # its caller went away, or it was failed while queued
                job.state, job.worker, job.started_at = _RUNNING, worker, time.monotonic()
            result, error = None, None
            try:
                result = self._execute(worker.session, job.inputs)  # type: ignore[arg-type]
            except BaseException as exc:  # whatever it is, the caller must hear of it
                error = exc
            with lock:
                abandoned = job.state == _ABANDONED
                job.state = _DONE
            if not abandoned:
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)
                continue
            if not self._come_back(worker, job):
                return

    def _open_replacement(self, worker: _Worker[S]) -> bool:
        try:
            worker.session = self._open_session()
        except Exception:
            log.exception("%s: the replacement instance could not open its session", self._what)
            with self._lock:
                self._live -= 1
                orphans = self._take_queued() if not self._live else []
            if orphans:
                error = self._all_stuck()
                for orphan in orphans:
                    orphan.loop.call_soon_threadsafe(_settle, orphan.future, None, error)
            return False
        log.info("%s: a new instance replaces a stuck one", self._what)
        return True

    def _come_back(self, worker: _Worker[S], job: _Job) -> bool:
        """An abandoned execution returned. Rejoin if an instance is missing, else end."""
        elapsed = time.monotonic() - job.started_at
        with self._lock:
            self._stuck -= 1
            stuck = self._stuck
            rejoin = not self._closed and self._live < self._target
            if rejoin:
                worker.abandoned = False
                self._live += 1
        if self._observer is not None:
            self._observer.stuck_executions(stuck)
        log.warning(
            "%s: an abandoned execution returned after %.1f s; %s", self._what, elapsed,
            "its instance serves again" if rejoin else "its session is closed",
        )
        if not rejoin:
            worker.session = None
        return rejoin

    def _take_queued(self) -> list[_Job]:
        """Jobs no instance will take (none is left); the caller holds the lock."""
        taken = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return taken
            if job is not None and job.state == _QUEUED:
                job.state = _DROPPED
                taken.append(job)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Ends every instance after its current execution and drops the sessions. Blocking
        (call it in a thread from the loop); does not wait for abandoned executions. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = [w for w in self._workers if not w.abandoned]
            for _ in workers:
                self._jobs.put(None)
            stuck = self._stuck
        for worker in workers:
            assert worker.thread is not None
            # An execution running now may yet get stuck; wait for it no longer than it may run.
            worker.thread.join(None if self._timeout_s is None else self._timeout_s + 1.0)
        if stuck:
            log.warning(
                "%s: closed with %d abandoned execution(s) still inside ONNX Runtime; "
                "their threads end when it returns", self._what, stuck,
            )
        with self._lock:
            leftovers = self._take_queued()
            for worker in self._workers:
                if not worker.abandoned:
                    worker.session = None
            self._workers.clear()
        for job in leftovers:
            job.loop.call_soon_threadsafe(_settle, job.future, None, ModelNotReady("model is unloading"))


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by its caller, or failed by the timeout
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
