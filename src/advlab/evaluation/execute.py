"""Executors: where the tasks of a run (measure a shard, fit a detector, check a defense)
are computed. The driver, the one process that writes the results database, hands an
executor a task list and stores each result as it streams back.

- :class:`Inline`: in this process, one task after another, with per-batch progress (tests,
  debugging, CUDA).
- :class:`Processes` (the default on CPU): forked worker processes of this machine, one torch
  thread each (small batches keep one core busy, so tasks side by side use a machine
  better than torch's threads inside one; ``benchmarks/executors.py`` times the tour with
  one and two workers). The shared
  context is inherited by the fork, never pickled; the small task items and the results
  travel by pickle. Workers die with the driver (Linux: a parent-death signal), and an
  interrupt (SIGINT; SIGTERM in the CLI) kills them at once: what they were computing is
  lost, what was stored stays.
- :class:`~advlab.evaluation.ray_executor.RayExecutor`: tasks on a Ray cluster
  (``pip install "advlab[ray]"``), the shared context in its object store once.

Every executor has ``map(shared, jobs, on_batch)``: ``shared`` is a tuple of objects every
task receives first; ``jobs`` are (task, item) pairs; it yields (index, result) in the order
results arrive. A task's error is raised in the driver.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Protocol, runtime_checkable

import torch

from advlab.evaluation.config import ExecutionSpec

log = logging.getLogger(__name__)

#: a task: task(*shared, item, on_batch=...) -> result
Task = Callable[..., Any]
Job = tuple[Task, Any]
#: progress of job i: (i, 0, 0) when it starts in this process, then (i, batch, batches)
OnBatch = Callable[[int, int, int], None]
#: seconds the driver waits for results at a time: the kernel may deliver SIGINT or SIGTERM to
#: one of the pool's threads, and Python's handler (KeyboardInterrupt) runs only when the main
#: thread wakes; without a timeout that is when the next task ends (seconds to hours)
POLL_S = 0.2


@runtime_checkable
class Shippable(Protocol):
    """A shared object that an executor shipping it to other machines sends as
    ``shipped(put)``: a copy whose large parts are handles ``put`` made (see
    :meth:`advlab.evaluation.context.Context.shipped`)."""

    def shipped(self, put: Callable[[Any], Any]) -> Any: ...


class Executor(Protocol):
    """What runs a run's tasks (see the module's docstring)."""

    workers: int

    def map(self, shared: tuple[Any, ...], jobs: Sequence[Job],
            on_batch: OnBatch | None = None) -> Iterator[tuple[int, Any]]:
        """(i, result of jobs[i]) for every job, in the order they finish."""
        ...

    def close(self) -> None:
        """Release the workers."""
        ...


class Inline:
    """Every task in this process, in order, with per-batch progress."""

    workers = 1

    def map(self, shared: tuple[Any, ...], jobs: Sequence[Job],
            on_batch: OnBatch | None = None) -> Iterator[tuple[int, Any]]:
        for i, (task, item) in enumerate(jobs):
            report = None
            if on_batch is not None:
                on_batch(i, 0, 0)
                report = lambda b, nb, i=i: on_batch(i, b, nb)  # noqa: E731
            yield i, task(*shared, item, on_batch=report)

    def close(self) -> None:
        pass


def worker_count(requested: int, device: torch.device) -> int:
    """Processes for computing tasks: ``requested``, or one per core when 0; always 1 on
    CUDA and where processes cannot be forked (only Linux forks safely with torch loaded)."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return 1
    return requested or len(os.sched_getaffinity(0))


_FORKED: tuple[tuple[Any, ...], Sequence[Job]] = ((), ())  # inherited by the fork


def _run_forked(i: int) -> Any:
    shared, jobs = _FORKED
    task, item = jobs[i]
    return task(*shared, item, on_batch=None)


_PR_SET_PDEATHSIG = 1


def _worker_init(parent: int) -> None:
    """A worker: one torch thread; SIGINT left to the driver (which stops the workers);
    killed when the driver dies, however it dies (Linux: PR_SET_PDEATHSIG)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the driver died before the signal was armed
        os._exit(1)


class Processes:
    """Tasks on ``workers`` forked processes of one torch thread each (one: :class:`Inline`).

    A pool lives for one :meth:`map`: the fork must see the shared context of that call.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def map(self, shared: tuple[Any, ...], jobs: Sequence[Job],
            on_batch: OnBatch | None = None) -> Iterator[tuple[int, Any]]:
        global _FORKED
        if self.workers <= 1 or len(jobs) <= 1:
            yield from Inline().map(shared, jobs, on_batch)
            return
        _FORKED = (shared, jobs)
        pool = ProcessPoolExecutor(min(self.workers, len(jobs)),
                                   multiprocessing.get_context("fork"),
                                   initializer=_worker_init, initargs=(os.getpid(),))
        try:
            pending = {pool.submit(_run_forked, i): i for i in range(len(jobs))}
            while pending:  # a timeout, so that a signal another thread got is taken soon
                done, _ = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for f in done:
                    yield pending.pop(f), f.result()
        finally:  # all done, or an error or an interrupt: stop every worker now
            _FORKED = ((), ())
            _kill(pool)

    def close(self) -> None:
        pass


def _kill(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued tasks and kill the pool's workers (running tasks are lost)."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            p.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def make_executor(spec: ExecutionSpec, workers: int, device: torch.device) -> Executor:
    """The executor that ``[execution]`` names (``workers``: see :func:`worker_count`)."""
    if spec.executor == "ray":
        from advlab.evaluation.ray_executor import RayExecutor

        return RayExecutor(spec, device)
    if spec.executor == "inline":
        return Inline()
    return Processes(worker_count(workers, device))
