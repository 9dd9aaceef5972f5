"""Tasks on a Ray cluster: ``advlab run --executor ray [--address ADDRESS]``.

The driver (the process that runs ``advlab run``) connects to the cluster at ``address``
(None: starts a local one) when it first hands out tasks, after the models were checked. It
puts the run's shared context (models, defended models) in the object store once, the
evaluation images as one object per chunk of ``shard_size`` rows
(:mod:`~advlab.evaluation.context`: a task fetches the chunks of its shard and no others), and
submits one Ray task per job, asking for ``cpus`` CPUs and, when the run uses CUDA, ``gpus``
GPUs. Results stream back as they finish; the driver alone
writes the results database, so a killed driver loses only the tasks in flight, and a
rerun skips every stored shard. A task whose worker process dies is retried by Ray
(``max_retries``); a task that raises is not (the error is raised in the driver).

What has to pickle: the process pool forks and never pickles a model; Ray pickles the
shared context (with cloudpickle) to ship it, so a user's model class must be importable
on every node (a module on the nodes' ``PYTHONPATH``, not ``__main__``). A model that does
not pickle, or a node that cannot unpickle it, gives a clear
:class:`~advlab.errors.ExecutionError`.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from advlab.errors import AdvlabError, ExecutionError
from advlab.evaluation.config import ExecutionSpec
from advlab.evaluation.context import Pair
from advlab.evaluation.execute import POLL_S, Job, OnBatch, Shippable

log = logging.getLogger(__name__)

try:
    import ray
except ModuleNotFoundError:  # pragma: no cover - the optional extra is missing
    ray = None

#: a task whose worker dies is tried this many more times
MAX_RETRIES = 3

# in a worker: object id -> the object, the last few kept (shared contexts, image chunks)
_CONTEXTS: OrderedDict[str, Any] = OrderedDict()
_CHUNKS: OrderedDict[str, Any] = OrderedDict()


def _fetch(ref: Any, cache: OrderedDict[str, Any], keep: int = 4) -> Any:
    """``ray.get(ref)``, once per worker process while among the ``keep`` last used."""
    key = ref.hex()
    if key in cache:
        cache.move_to_end(key)
    else:
        if len(cache) >= keep:
            cache.popitem(last=False)
        cache[key] = ray.get(ref)
    return cache[key]


@dataclass(frozen=True)
class RayChunk:
    """A chunk of the evaluation images in the object store; a task fetches it on use."""

    ref: Any

    def get(self) -> Pair:
        return _fetch(self.ref, _CHUNKS)


def _run(job: Job, refs: list[Any], threads: int) -> Any:
    """A Ray task: the job on the shared objects (fetched once per worker process)."""
    torch.set_num_threads(threads)
    task, item = job
    return task(*(_fetch(r, _CONTEXTS) for r in refs), item, on_batch=None)


def _unpicklable(obj: Any) -> tuple[str, str] | None:
    """(which part, why) of a shared object (its fields, and their dict entries) that does
    not pickle, or None."""
    parts = vars(obj).items() if hasattr(obj, "__dict__") else [("", obj)]
    for name, v in parts:
        for key, item in (v.items() if isinstance(v, dict) else [(None, v)]):
            try:
                ray.cloudpickle.dumps(item)
            except Exception as exc:  # noqa: BLE001 - any pickling error names the culprit
                where = name if key is None else f"{name}[{key!r}]"
                return f"{where} ({type(item).__name__})", f"{type(exc).__name__}: {exc}"
    return None


class RayExecutor:
    """Tasks on a Ray cluster (see the module's docstring).

    Args:
        spec: ``[execution]``: the cluster's ``address`` (None: a local cluster) and the
            ``cpus`` and ``gpus`` each task asks for.
        device: the run's device; on CUDA each task asks for ``spec.gpus`` GPUs.

    Raises:
        ExecutionError: Ray is not installed; the cluster cannot be reached (when the
            executor first connects: at :attr:`workers` or the first :meth:`map`).
    """

    def __init__(self, spec: ExecutionSpec, device: torch.device) -> None:
        if ray is None:
            raise ExecutionError('the ray executor needs Ray: pip install "advlab[ray]"')
        self.spec, self._gpus = spec, spec.gpus if device.type == "cuda" else 0
        self._own, self._workers = False, 0
        self._refs: dict[int, tuple[int, Any, Any]] = {}  # id -> (version, object, ref)

    @property
    def workers(self) -> int:
        """Task slots of the cluster (connects to it)."""
        self._connect()
        return self._workers

    def _connect(self) -> None:
        if self._workers:
            return
        spec = self.spec
        self._own = not ray.is_initialized()
        if self._own:
            try:
                local = {"include_dashboard": False} if spec.address is None else {}
                ray.init(address=spec.address or "local", logging_level=logging.WARNING,
                         log_to_driver=False, **local)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutionError(f"cannot connect to a Ray cluster at {spec.address}: "
                                     f"{exc}") from exc
        self._remote = ray.remote(num_cpus=spec.cpus, num_gpus=self._gpus,
                                  max_retries=MAX_RETRIES)(_run)
        self._threads = max(int(spec.cpus), 1)
        self._workers = max(int(ray.cluster_resources().get("CPU", 1) // spec.cpus), 1)
        log.info("ray: %s, %d task slots", spec.address or "local cluster", self.workers)

    def _put(self, obj: Any) -> Any:
        """The object's ref in the object store, put once (again when its version grows); a
        :class:`~advlab.evaluation.execute.Shippable` goes as what it ships, its image
        chunks each as their own object."""
        version = getattr(obj, "version", 0)
        got = self._refs.get(id(obj))
        if got is None or got[0] != version or got[1] is not obj:
            try:
                ref = ray.put(obj.shipped(self._chunk) if isinstance(obj, Shippable) else obj)
            except Exception as exc:  # pickling: any exception a __reduce__ may raise
                what, why = _unpicklable(obj) or (type(obj).__name__, str(exc))
                raise ExecutionError(
                    f"cannot ship {what} to the Ray workers ({why}): Ray pickles the models "
                    "and detectors, so a model's class must pickle and be defined in a "
                    "module importable on every node (not in __main__ or a notebook)"
                ) from exc
            self._refs[id(obj)] = got = (version, obj, ref)
        return got[2]

    def _chunk(self, pair: Pair) -> RayChunk:
        return RayChunk(self._put(pair))

    def map(self, shared: tuple[Any, ...], jobs: Sequence[Job],
            on_batch: OnBatch | None = None) -> Iterator[tuple[int, Any]]:
        self._connect()
        refs = [self._put(o) for o in shared]
        pending = {self._remote.remote(job, refs, self._threads): i
                   for i, job in enumerate(jobs)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                for f in done:
                    i = pending.pop(f)
                    yield i, self._result(f, jobs[i])
        finally:  # an error or an interrupt: stop what is still running
            for f in pending:
                ray.cancel(f, force=True)

    @staticmethod
    def _result(ref: Any, job: Job) -> Any:
        try:
            return ray.get(ref)
        except AdvlabError:
            raise  # the task's own error (Ray's error is an instance of its cause)
        except ray.exceptions.RayError as exc:
            raise ExecutionError(f"a Ray task ({job[0].__name__}) failed: {exc}; a model "
                                 "that a node cannot unpickle must be importable there"
                                 ) from exc

    def close(self) -> None:
        """Forget the shared objects; stop the local cluster this executor started."""
        self._refs.clear()
        self._workers = 0
        if self._own and ray.is_initialized():
            ray.shutdown()
