"""A small pool of worker processes that run tasks one at a time and can be stopped or aborted.

Used by `launch.py` to run partitions concurrently (why processes, not threads: see its
docstring). What a general-purpose pool does not give:

* Workers are forked from a `forkserver` that has imported the modules named in `preload` once
  (Dagster and the definitions take seconds of CPU to import and warm up), so starting N workers
  costs little. A forked worker starts with the forkserver's environment, not the caller's:
  `setup` (a `module:function` name, resolved in the worker, so the caller need not import the
  worker's module) runs first in each worker and brings what it needs.
* Signals are the parent's to interpret. A Ctrl-C or `timeout --signal=INT` reaches the whole
  process group: workers ignore SIGINT and SIGTERM, and run each task in a thread of their own,
  so that nothing in the task installs a handler of its own (Dagster replaces SIGINT's handler
  for the length of a run it executes in the main thread, and turns it into a step retry).
* Stopping: `stop()` lets running tasks finish and starts no new one; `abort()` kills the
  workers (SIGKILL): the tasks must be safe to kill at any point, as publication is (objects are
  written atomically, records last; an interrupted upload is an invisible leftover that
  `talos-pipeline prune` collects).
* A worker that dies (killed, out of memory) fails only its own task, named in the result.
* A worker whose parent is gone takes no new task.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

_CONTEXT = multiprocessing.get_context("forkserver")
_STARTED, _DONE = "started", "done"
JOIN_SECONDS = 10.0

Run = Callable[[Any], "str | None"]
"""What a worker does with one task: None when it succeeded, else the error message."""


@dataclass(frozen=True)
class Result:
    task: Any
    error: str | None


def start_forkserver(preload: list[str]) -> None:
    """Start the forkserver now (it imports `preload` in the background), so that its start-up
    overlaps with the caller's own work before the pool is needed."""
    _CONTEXT.set_forkserver_preload(preload)
    multiprocessing.forkserver.ensure_running()


class Abandoned(Exception):
    """`in_thread` stopped waiting: its `give_up` said so."""


def in_thread(work: Callable[[], Any], give_up: Callable[[], bool] = lambda: False) -> Any:
    """`work()` in a thread of its own, joined in short waits so that the calling (main) thread
    keeps its signal handlers and runs them meanwhile; its result, or its exception re-raised.
    When `give_up()` turns true first, raises `Abandoned` (the daemon thread dies with the process)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="talos-task", daemon=True)
    thread.start()
    while thread.is_alive():
        if give_up():
            raise Abandoned
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """Signals are the parent's to act on (see the module docstring)."""


def _serve(setup: str, setup_args: tuple[Any, ...], tasks: Any, results: Any, stopping: Any) -> None:
    """A worker's life: set up once, then take tasks until there are none, or it is told to stop."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # a handler, not SIG_IGN: that would pass to subprocesses
        signal.signal(signum, _ignore)
    parent = multiprocessing.parent_process()  # the pool's process (the forkserver is the OS parent)
    module, _, name = setup.partition(":")
    try:
        run = getattr(importlib.import_module(module), name)(*setup_args)
        while not stopping.is_set() and (parent is None or parent.is_alive()):
            index, task = tasks.get()
            if index is None or stopping.is_set():
                return
            results.put((_STARTED, os.getpid(), index, None))
            try:
                error = in_thread(lambda: run(task))  # noqa: B023 - called before the loop moves on
            except Exception as exc:  # the task's own failure, reported as its result
                error = f"{type(exc).__name__}: {exc}"
            results.put((_DONE, os.getpid(), index, error))
    except KeyboardInterrupt:  # during set-up
        return


class WorkerPool:
    """`size` worker processes running `setup(*setup_args)` once, then each task of `tasks`."""

    def __init__(
        self,
        size: int,
        tasks: Sequence[Any],
        setup: Callable[..., Run],
        setup_args: tuple[Any, ...],
        preload: list[str],
    ) -> None:
        start_forkserver(preload)
        self.tasks = list(tasks)
        self._queue = _CONTEXT.Queue()
        self._results = _CONTEXT.Queue()
        self._stopping = _CONTEXT.Event()
        for index, task in enumerate(self.tasks):
            self._queue.put((index, task))
        for _ in range(size):
            self._queue.put((None, None))
        self._processes = [
            _CONTEXT.Process(
                target=_serve,
                args=(setup, setup_args, self._queue, self._results, self._stopping),
                name=f"talos-worker-{n}",
                daemon=True,
            )
            for n in range(size)
        ]
        self._running: dict[int, int] = {}  # pid -> index of its task
        self._finished: set[int] = set()
        self._aborted = False

    def start(self) -> WorkerPool:
        for process in self._processes:
            process.start()
        return self

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def busy(self) -> bool:
        """A worker is still at it, a task is unaccounted for, or a result is unread."""
        alive = any(process.is_alive() for process in self._processes)
        return alive or bool(self._running) or not self._results.empty()

    def next(self, timeout: float) -> Result | None:
        """The next finished task, or None after `timeout` seconds without one."""
        try:
            kind, pid, index, error = self._results.get(timeout=timeout)
        except queue.Empty:
            return self._lost()
        if kind == _STARTED:
            self._running[pid] = index
            return None
        self._running.pop(pid, None)
        self._finished.add(index)
        return Result(self.tasks[index], error)

    def _lost(self) -> Result | None:
        """The task of a worker that died without saying so."""
        for process in self._processes:
            if process.pid in self._running and not process.is_alive():
                index = self._running.pop(process.pid)
                self._finished.add(index)
                if self._aborted:
                    return Result(self.tasks[index], "aborted: its worker process was stopped")
                return Result(self.tasks[index], f"its worker process ended (exit code {process.exitcode})")
        return None

    def not_started(self) -> list[Any]:
        started = self._finished | set(self._running.values())
        return [task for index, task in enumerate(self.tasks) if index not in started]

    def stop(self) -> None:
        """Start no new task; running ones finish."""
        self._stopping.set()

    def abort(self) -> None:
        """End the running tasks now: kill the workers."""
        self.stop()
        self._aborted = True
        for process in self._processes:
            if process.is_alive():
                process.kill()

    def close(self) -> None:
        self.stop()
        for process in self._processes:
            process.join(JOIN_SECONDS)
            if process.is_alive():
                process.kill()
                process.join(JOIN_SECONDS)
        self._queue.cancel_join_thread()
        self._results.cancel_join_thread()

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
