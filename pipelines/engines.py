"""Where tasks run: in the driver (``inline``), a local process pool (``local``) or Ray
(``ray``). One scheduler serves all three: a task starts when the tasks it comes after have
finished, a task whose worker died is run again (``retries``), and a task whose prerequisite
failed fails without running.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime

from theralake.lake import Lake
from theralake.pipelines.lock import live_run_guard
from theralake.pipelines.steps import Task, TaskFailed, run_task

ENGINES = ("local", "ray")


@dataclass
class Outcome:
    """How one attempt of a task ended."""

    status: str  # done | failed | retried (its worker died; it is run again)
    error: str | None
    start_utc: datetime
    end_utc: datetime
    worker: str
    attempt: int = 1
    lake_snapshot: int | None = None  # the lake snapshot the task read at its start

    @property
    def seconds(self) -> float:
        return (self.end_utc - self.start_utc).total_seconds()


def set_threads(n: int) -> None:
    """Threads of the numerical libraries in this process (a task's share of the cores)."""
    import SimpleITK as sitk
    import torch

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    torch.set_num_threads(n)


_PR_SET_PDEATHSIG = 1
#: in a pool's worker process: the queue its tasks' stages go to (set by ``_init_worker``)
_STAGES: list[object] = []
#: how often a waiting run looks at its workers' stages (s)
STAGE_POLL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Make this worker process end when the process that started it ends, however it ends:
    the kernel's parent-death signal (Linux), and a thread watching the parent elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was set
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _init_worker(parent_pid: int, stages: object | None) -> None:
    """A pool worker: dies with its parent; reports its tasks' stages to ``stages``."""
    die_with_parent(parent_pid)
    if stages is not None:
        _STAGES.append(stages)


def execute(lake_path: str, task: Task, threads: int, run_token: str | None = None,
            on_stage: Callable[[str], None] | None = None) -> Outcome:
    """Run one task in this process; its own failure is an outcome, never an exception.

    With ``run_token`` every write first checks that this run still holds the lake's run
    lock, so a worker that outlives its run writes nothing. The task's stages go to
    ``on_stage``, or in a pool's worker to its run's queue.
    """
    if on_stage is None and _STAGES:
        queue = _STAGES[0]

        def on_stage(name: str) -> None:
            queue.put((task.key, name))  # type: ignore[attr-defined]

    start = datetime.now(UTC)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    set_threads(threads)
    snapshot = None
    try:
        lake = Lake(lake_path, create=False)
        snapshot = lake.snapshot()
        if run_token is not None:
            lake.write_guard = live_run_guard(lake.path, run_token)
        run_task(lake, task, on_stage)
        status, error = "done", None
    except TaskFailed as exc:
        status, error = "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - one patient's failure must not stop the cohort
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, (ValueError, RuntimeError, OSError, KeyError)):
            error += "\n" + traceback.format_exc(limit=5)
    return Outcome(status, error, start, datetime.now(UTC), worker, lake_snapshot=snapshot)


OnOutcome = Callable[[Task, Outcome], None]


StageReporter = Callable[[str, str], None]


class _Backend:
    """Submits one attempt of a task and waits for attempts to end; ``reporter`` (task key,
    stage name) hears the stages of running tasks where the engine can report them."""

    reporter: StageReporter | None = None

    def submit(self, task: Task) -> object: ...

    def wait_any(self, handles: list[object]) -> list[tuple[object, Outcome | None]]:
        """Ended attempts; ``None`` for an attempt whose worker died."""

    def close(self) -> None: ...


def schedule(backend: _Backend, tasks: list[Task], capacity: int, retries: int,
             on_outcome: OnOutcome) -> None:
    """Run ``tasks`` respecting ``after``; ``on_outcome`` sees every attempt's end."""
    pending = list(tasks)
    keys = {t.key for t in tasks}
    finished: dict[str, str] = {}
    running: dict[object, tuple[Task, int, datetime]] = {}
    while pending or running:
        for task in list(pending):
            if len(running) >= capacity:
                break
            deps = [d for d in task.after if d in keys]
            if any(d not in finished for d in deps):
                continue
            pending.remove(task)
            failed = [d for d in deps if finished[d] != "done" and task.after_success]
            if failed:
                now = datetime.now(UTC)
                finished[task.key] = "failed"
                on_outcome(task, Outcome("failed", f"not run: {', '.join(failed)} failed",
                                         now, now, "-"))
                continue
            running[backend.submit(task)] = (task, 1, datetime.now(UTC))
        if not running:
            if pending:
                raise RuntimeError(f"tasks wait on each other: {[t.key for t in pending]}")
            continue
        for handle, outcome in backend.wait_any(list(running)):
            task, attempt, start = running.pop(handle)
            if outcome is None:  # the worker died mid-task
                outcome = Outcome("retried" if attempt <= retries else "failed",
                                  f"worker died (attempt {attempt})", start,
                                  datetime.now(UTC), "-")
                if attempt <= retries:
                    outcome.attempt = attempt
                    on_outcome(task, outcome)
                    running[backend.submit(task)] = (task, attempt + 1, datetime.now(UTC))
                    continue
            outcome.attempt = attempt
            finished[task.key] = outcome.status
            on_outcome(task, outcome)


class InlineBackend(_Backend):
    """Tasks run one at a time in this process."""

    def __init__(self, lake_path: str, threads: int, run_token: str | None = None):
        self.lake_path, self.threads, self._done = lake_path, threads, []
        self.run_token = run_token

    def submit(self, task: Task) -> object:
        handle = object()
        report = self.reporter
        on_stage = (lambda name: report(task.key, name)) if report else None
        self._done.append((handle, execute(self.lake_path, task, self.threads,
                                           self.run_token, on_stage)))
        return handle

    def wait_any(self, handles: list[object]) -> list[tuple[object, Outcome | None]]:
        done, self._done = self._done, []
        return done


class LocalBackend(_Backend):
    """A pool of worker processes that die with this process; a pool broken by a dying
    worker is replaced."""

    def __init__(self, lake_path: str, workers: int, threads: int, run_token: str | None = None):
        self.lake_path, self.workers, self.threads = lake_path, workers, threads
        self.run_token = run_token
        self._pool: ProcessPoolExecutor | None = None
        self._stages = multiprocessing.get_context("spawn").Queue()

    def submit(self, task: Task) -> object:
        for _ in range(2):
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker, initargs=(os.getpid(), self._stages))
            try:
                future = self._pool.submit(execute, self.lake_path, task, self.threads,
                                           self.run_token)
            except BrokenProcessPool:  # a worker died since the last wait: a fresh pool
                self._retire(self._pool)
                continue
            future.pool = self._pool  # type: ignore[attr-defined]
            return future
        raise RuntimeError("the worker pool breaks as soon as it starts")

    def wait_any(self, handles: list[object]) -> list[tuple[object, Outcome | None]]:
        """A pool broken by a dead worker fails every attempt in it, each as ``None``. Waits
        at most ``STAGE_POLL_S``, passing the workers' stages to ``reporter`` meanwhile."""
        done, _ = wait(handles, timeout=STAGE_POLL_S,  # type: ignore[arg-type]
                       return_when=FIRST_COMPLETED)
        self._report()
        out: list[tuple[object, Outcome | None]] = []
        for fut in done:
            if isinstance(fut.exception(), BrokenProcessPool):  # type: ignore[union-attr]
                self._retire(fut.pool)  # type: ignore[union-attr]
                out.append((fut, None))
            else:
                out.append((fut, _result(fut)))  # type: ignore[arg-type]
        return out

    def _report(self) -> None:
        while True:
            try:
                key, name = self._stages.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            if self.reporter is not None:
                self.reporter(key, name)

    def _retire(self, pool: ProcessPoolExecutor) -> None:
        pool.shutdown(wait=False, cancel_futures=True)
        if pool is self._pool:
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._stages.close()


def _result(fut: Future) -> Outcome:
    exc = fut.exception()
    if exc is None:
        return fut.result()
    now = datetime.now(UTC)
    return Outcome("failed", f"{type(exc).__name__}: {exc}", now, now, "-")


class RayBackend(_Backend):
    """Ray tasks (``address``: an existing cluster, e.g. ``auto``; None starts a local Ray).

    Ray itself re-runs a task whose worker died (``max_retries``); an attempt that still dies
    ends as failed.
    """

    def __init__(self, lake_path: str, workers: int, threads: int, retries: int,
                 address: str | None = None, run_token: str | None = None):
        import ray

        self.lake_path, self.threads, self.run_token = lake_path, threads, run_token
        self._started = not ray.is_initialized()
        if self._started:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            kwargs = {"address": address} if address else {"num_cpus": workers}
            ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                     **kwargs)
        self._remote = ray.remote(num_cpus=1, max_retries=retries)(execute)

    def submit(self, task: Task) -> object:
        return self._remote.remote(self.lake_path, task, self.threads, self.run_token)

    def wait_any(self, handles: list[object]) -> list[tuple[object, Outcome | None]]:
        import ray

        done, _ = ray.wait(handles, num_returns=1)
        out: list[tuple[object, Outcome | None]] = []
        for ref in done:
            try:
                out.append((ref, ray.get(ref)))
            except ray.exceptions.RayError as exc:  # retries exhausted
                now = datetime.now(UTC)
                out.append((ref, Outcome("failed", f"{type(exc).__name__}: {exc}", now, now,
                                         "-")))
        return out

    def close(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()


def default_threads(workers: int, setting: object = "auto") -> int:
    if setting not in (None, "auto"):
        return max(1, int(setting))  # type: ignore[arg-type]
    return max(1, (os.cpu_count() or 1) // max(1, workers))
