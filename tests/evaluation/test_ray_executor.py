"""advlab.evaluation.ray_executor on a local Ray cluster of 2 CPUs (``local_ray``, skipped
without Ray): what is put in the object store and how often, what the tasks fetch, task
slots, errors, and when it connects. (That a run on Ray stores what an inline run stores is
test_execute.py's ``test_ray_stores_what_inline_stores``.)"""
from __future__ import annotations

import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import make_tiny

from advlab.errors import ConfigError, ExecutionError, ModelOutputError
from advlab.evaluation import runner
from advlab.evaluation.config import ExecutionSpec
from advlab.evaluation.context import Context, Images, Settings
from testkit import tiny_config, tiny_setup

X = torch.arange(40.0).view(10, 1, 2, 2) / 40
Y = torch.arange(10)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def rx(local_ray: Any) -> Any:
    """The module under test, with this test module's tasks shipped to the workers by value
    (the workers cannot import a test module)."""
    from advlab.evaluation import ray_executor

    local_ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_executor


def context() -> Context:
    return Context(Settings(0, 8, (1,), (0.05,), 2, 1.0, 8, 20), {}, {}, Images.of(X, Y, 4))


def rows_task(ctx: Context, span: tuple[int, int], on_batch: Any = None) -> tuple[Any, ...]:
    """In a worker: the rows of ``span``, the worker's pid, the fetched context's id and the
    worker's threads."""
    x, y = ctx.images.rows(*span)
    return x, y, os.getpid(), id(ctx), torch.get_num_threads()


def failing_task(ctx: Context, i: int, on_batch: Any = None) -> int:
    if i == 1:
        raise ConfigError("from a worker")
    return i


def test_fetch_keeps_the_last_few_objects(rx: Any, local_ray: Any) -> None:
    refs = [local_ray.put(i) for i in range(3)]
    cache: OrderedDict[str, Any] = OrderedDict()
    assert [rx._fetch(refs[i], cache, keep=2) for i in (0, 1, 0, 2)] == [0, 1, 0, 2]
    assert list(cache) == [refs[0].hex(), refs[2].hex()]   # 1, the least recently used, left


def test_the_context_is_put_once_per_version_and_its_chunks_once(
        rx: Any, local_ray: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    puts: list[type] = []
    real = local_ray.put
    monkeypatch.setattr(local_ray, "put", lambda obj: puts.append(type(obj)) or real(obj))
    ex = rx.RayExecutor(ExecutionSpec("ray"), CPU)
    ctx = context()
    spans = [(0, 4), (4, 8), (8, 10), (3, 9)] * 2
    out = dict(ex.map((ctx,), [(rows_task, s) for s in spans]))
    assert puts == [tuple] * 3 + [Context]       # 3 chunks, then the context holding them
    for i, (start, stop) in enumerate(spans):
        assert torch.equal(out[i][0], X[start:stop]) and torch.equal(out[i][1], Y[start:stop])
    ids = {(pid, cid) for _, _, pid, cid, _ in out.values()}
    assert len(ids) == len({pid for pid, _ in ids})   # one fetch of the context per worker
    assert {threads for *_, threads in out.values()} == {1}   # spec.cpus threads per task
    dict(ex.map((ctx,), [(rows_task, (0, 2))]))
    assert len(puts) == 4                                   # the same version: nothing new
    ctx.version += 1                                        # the driver added to it
    [(_, (x, *_))] = list(ex.map((ctx,), [(rows_task, (5, 7))]))
    assert puts[4:] == [Context] and torch.equal(x, X[5:7])  # the chunks are not put again
    ex.close()
    assert ex._refs == {} and local_ray.is_initialized()     # a cluster it did not start


def test_task_slots_follow_the_cpus_a_task_asks_for(rx: Any) -> None:
    assert [rx.RayExecutor(ExecutionSpec("ray", cpus=c), CPU).workers
            for c in (1.0, 2.0, 0.5)] == [2, 1, 4]


def test_a_tasks_error_reaches_the_driver(rx: Any) -> None:
    ex = rx.RayExecutor(ExecutionSpec("ray"), CPU)
    with pytest.raises(ConfigError, match="from a worker"):
        list(ex.map((context(),), [(failing_task, i) for i in range(3)]))
    assert dict(ex.map((context(),), [(failing_task, i) for i in (0, 2)])) == {0: 0, 1: 2}


class Unpicklable(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]

    def __reduce__(self) -> Any:
        raise TypeError("no pickling here")


def one_cell() -> Any:
    return tiny_config(models=["a"], attacks=[{"name": "fgsm", "eps": 0.1}])


def test_ray_says_what_did_not_pickle(rx: Any, tmp_path: Path) -> None:
    _, data = tiny_setup(make_tiny)
    why = r"cannot ship models\['a'\] \(Unpicklable\) .*\(TypeError: no pickling here\)"
    with pytest.raises(ExecutionError, match=why + ".*importable on every node"):
        runner.run(one_cell(), root=tmp_path, models={"a": Unpicklable().eval()}, data=data,
                   executor=rx.RayExecutor(ExecutionSpec("ray"), CPU))


def test_ray_connects_after_the_models_are_checked(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from advlab.evaluation.ray_executor import RayExecutor

    _, data = tiny_setup(make_tiny)

    def too_early(*a: Any, **kw: Any) -> None:
        raise AssertionError("Ray started before the models were checked")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", too_early)
    ex = RayExecutor(ExecutionSpec("ray", address="127.0.0.1:9"), CPU)
    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    with pytest.raises(ModelOutputError):
        runner.run(one_cell(), root=tmp_path, models={"a": wrong}, data=data, executor=ex)
    with pytest.raises(AssertionError, match="before the models"):  # it would connect now
        assert ex.workers
