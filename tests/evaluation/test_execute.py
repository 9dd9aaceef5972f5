"""Executors: the same cells inline, on forked processes and on a local Ray cluster; shards
that equal the whole cell and resume on their own. (The Ray executor's own behaviour is
test_ray_executor.py's.)"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import advlab
from advlab.errors import ConfigError
from advlab.evaluation import execute, results, runner
from advlab.evaluation.config import config_from_dict
from advlab.evaluation.store import Store

BITDEPTH = {"name": "transformed", "params": {"transforms": [{"name": "BitDepth", "bits": 2}]}}


def setup() -> tuple[dict[str, torch.nn.Module], tuple, tuple]:
    """Two seeded (untrained) zoo digits MLPs, 32 images labelled by the first, 40 to fit."""
    models = {k: advlab.zoo.build("digits-mlp", seed=s).eval() for k, s in (("a", 0), ("b", 1))}
    g = torch.Generator().manual_seed(3)
    x, x_tr = torch.rand(32, 1, 8, 8, generator=g), torch.rand(40, 1, 8, 8, generator=g)
    with torch.no_grad():
        return models, (x, models["a"](x).argmax(1)), (x_tr, models["a"](x_tr).argmax(1))


def config(**over: Any) -> Any:
    """Naive, defended (adaptive), detector-scored and detector-aware cells, sanity checks
    and the cells their findings name, and a robustness curve."""
    d = {"name": "e", "batch_size": 8, "models": ["a", "b"], "data": {"name": "x", "n": 32},
         "defenses": ["none", BITDEPTH],
         "detectors": [{"name": "activation-knn", "params": {"layers": ["fc1"], "k": 3}}],
         "attacks": [{"name": "fgsm", "eps": [0.05, 0.2], "defenses": ["none"]},
                     {"name": "pgd", "eps": 0.2, "params": {"steps": 3}, "models": ["a"]}],
         "curves": [{"grid": [0.2], "params": {"steps": 3}, "bounded_params": {"steps": 3},
                     "models": ["a"], "defenses": ["none"]}],
         "adaptive": {"steps": 3}, "report": {"gallery": 3, "eps": 0.2},
         "sanity": {"max_examples": 8, "blackbox_queries": 20}}
    return config_from_dict({**d, **over})


def stored(root: Path) -> dict[str, Any]:
    """Everything stored per cell but timings: rows, probes, scores, gallery, summaries."""
    with Store(root / "advlab.sqlite") as s:
        rec = s.run("e")
        out: dict[str, Any] = {"sanity": rec["env"].get("sanity")}
        summaries = {c["key"]: c for c in results.collect(s, "e")["cells"]}
        for key, _ in rec["cells"]:
            gal = [(i, x.tobytes(), xa.tobytes()) for i, x, xa in s.gallery(key)]
            out[key] = (s.examples(key), s.probes(key), s.scores(key), gal,
                        {k: v for k, v in summaries[key].items()
                         if k not in ("wall_s", "started", "finished")})
    return out


@contextlib.contextmanager
def counting_writes() -> Iterator[list[int]]:
    """The first image index of every shard or cell the store writes, while in the block."""
    computed: list[int] = []
    real = Store.write_cell

    def counting(store: Store, rec, *a: Any, **kw: Any) -> bool:  # noqa: ANN001
        computed.append(int(rec.examples["idx"][0]))
        return real(store, rec, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Store, "write_cell", counting)
        yield computed


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_same(u, v, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    models, data, train = setup()
    root = tmp_path_factory.mktemp("inline")
    rec = runner.run(config(), root=root, models=models, data=data, train_data=train,
                     executor=execute.Inline())
    kinds = {sp.get("adaptive", {}).get("against", "naive") for _, sp in rec["cells"]}
    assert kinds == {"naive", "defense", "detector", "sanity"}, kinds  # every kind of cell
    return stored(root)


def test_processes_store_what_inline_stores(inline_run, tmp_path: Path) -> None:  # noqa: ANN001
    models, data, train = setup()
    runner.run(config(), root=tmp_path, models=models, data=data, train_data=train,
               executor=execute.Processes(2))
    assert_same(inline_run, stored(tmp_path))


def test_shards_store_what_whole_cells_store(inline_run, tmp_path: Path) -> None:  # noqa: ANN001
    models, data, train = setup()
    events: list[runner.Progress] = []
    runner.run(config(shard_size=8), root=tmp_path, models=models, data=data,
               train_data=train, executor=execute.Inline(), progress=events.append)
    assert_same(inline_run, stored(tmp_path))
    assert sum(e.event == "shard" for e in events) > 0


def test_interrupted_shards_resume_without_recomputing(tmp_path: Path,  # noqa: ANN001
                                                        inline_run) -> None:
    models, data, train = setup()
    cfg = config(shard_size=8, sanity={"enabled": False}, adaptive={"enabled": False})
    seen: list[tuple[str, int]] = []

    def stop(p: runner.Progress) -> None:  # stop after the first cell's second shard
        if p.event == "shard":
            seen.append((p.label, p.batch))
            if len(seen) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, root=tmp_path, models=models, data=data, train_data=train,
                   executor=execute.Inline(), progress=stop)
    with Store(tmp_path / "advlab.sqlite") as s:
        keys = [k for k, _ in s.run("e")["cells"]]
        partial = {k: s.stored_shards(k) for k in keys if s.stored_shards(k)}
        assert list(partial.values()) == [{(0, 8), (8, 8)}]   # one cell, half stored
        assert not s.finished(partial) and len(s.finished(keys)) < len(keys)
        stored_before = s.finished(keys)
    with counting_writes() as computed:
        rec = runner.run(cfg, root=tmp_path, models=models, data=data, train_data=train,
                         executor=execute.Inline())
    with Store(tmp_path / "advlab.sqlite") as s:
        computed_cells = {k for k in keys if k not in stored_before}
        assert len(computed) == 2 + 4 * (len(computed_cells) - 1)  # 2 shards of the half cell
    done = stored(tmp_path)
    for key, _ in rec["cells"]:
        assert_same(inline_run[key], done[key], key)


def test_ray_stores_what_inline_stores(inline_run, local_ray, tmp_path: Path) -> None:  # noqa: ANN001
    from advlab.evaluation.config import ExecutionSpec
    from advlab.evaluation.ray_executor import RayExecutor

    models, data, train = setup()
    ex = RayExecutor(ExecutionSpec("ray"), torch.device("cpu"))
    assert ex.workers == 2
    runner.run(config(shard_size=16), root=tmp_path, models=models, data=data,
               train_data=train, executor=ex)
    ex.close()
    assert_same(inline_run, stored(tmp_path))
    assert local_ray.is_initialized()          # a cluster it did not start stays up


class Fetched:
    """A shipped chunk that notes each fetch of it in ``log``."""

    def __init__(self, index: int, pair: Any, log: list[int]) -> None:
        self.index, self.pair, self.log = index, pair, log

    def get(self) -> Any:
        self.log.append(self.index)
        return self.pair


class Shipping(execute.Inline):
    """In this process, but with the context shipped as an executor for other machines
    ships it (every image chunk a handle), noting the chunks each task fetched."""

    def __init__(self) -> None:
        self.fetched: list[tuple[Any, set[int]]] = []

    def map(self, shared: tuple[Any, ...], jobs: Any, on_batch: Any = None) -> Any:
        log: list[int] = []
        count = iter(range(1000))
        ship = [o.shipped(lambda p: Fetched(next(count), p, log))
                if isinstance(o, execute.Shippable) else o for o in shared]
        for i, (task, item) in enumerate(jobs):
            log.clear()
            yield i, task(*ship, item, on_batch=None)
            self.fetched.append((item, set(log)))


def test_shipped_images_travel_per_shard(inline_run, tmp_path: Path) -> None:  # noqa: ANN001
    models, data, train = setup()
    ex = Shipping()
    runner.run(config(shard_size=8), root=tmp_path, models=models, data=data,
               train_data=train, executor=ex)
    assert_same(inline_run, stored(tmp_path))
    shards = [(item, got) for item, got in ex.fetched if hasattr(item, "cell")]
    assert len(shards) > 8
    for shard, got in shards:
        calibrated = shard.cell.spec.get("adaptive", {}).get("against") == "detector"
        whole = set(range(4)) if calibrated else set()  # a detector's threshold: all clean
        assert got == {shard.start // 8} | whole, shard.cell.label
    checks = [got for item, got in ex.fetched if type(item).__name__ == "SanityGroup"]
    assert checks and all(got == {0} for got in checks)  # max_examples = 8: one chunk


def _item(shared: int, i: int, on_batch=None) -> tuple[int, int]:  # noqa: ANN001
    if i < 0:
        raise ConfigError("from a worker")
    return shared + i, torch.get_num_threads()


def test_processes_return_every_result_and_raise_a_task_error() -> None:
    ex = execute.Processes(2)
    out = dict(ex.map((10,), [(_item, i) for i in range(5)]))
    assert sorted(out) == list(range(5)) and all(out[i][0] == 10 + i for i in out)
    if execute.worker_count(2, torch.device("cpu")) == 2:      # forked workers: one thread
        assert {threads for _, threads in out.values()} == {1}
    with pytest.raises(ConfigError, match="from a worker"):
        list(ex.map((0,), [(_item, 1), (_item, -1), (_item, 3)]))


def test_worker_count() -> None:
    assert execute.worker_count(0, torch.device("cuda")) == 1
    assert execute.worker_count(3, torch.device("cpu")) in (1, 3)  # 1 where fork is unsafe
    assert execute.worker_count(0, torch.device("cpu")) >= 1
