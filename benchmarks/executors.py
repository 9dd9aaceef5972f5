"""The built-in tour through the executors, in one process: the process pool against Ray
(a local cluster), and each with 1 and 2 workers; the stored cells are compared.

    PYTHONPATH=src python benchmarks/executors.py [--n 300] [--runs pool2,ray2,pool1,ray1]

Run it after a first ``advlab run`` so that the zoo models and the trained defense are
cached (their training would otherwise land in the first run's time). Ray's time includes
starting its local cluster (``ray.init``), reported apart too. Wall times on a shared
machine move with its load: compare ratios of runs made side by side.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from advlab.evaluation import execute, runner
from advlab.evaluation.config import ExecutionSpec, load_config
from advlab.evaluation.store import Store


def tour_run(root: Path, n: int, what: str) -> tuple[float, float]:
    """(wall seconds of the run, of which starting the executor)."""
    cfg = load_config()
    cfg.data = dataclasses.replace(cfg.data, n=n)
    workers = int(what[-1])
    t0 = time.perf_counter()
    if what.startswith("ray"):
        import ray

        from advlab.evaluation.ray_executor import RayExecutor

        ray.init(address="local", num_cpus=workers, include_dashboard=False,
                 logging_level=logging.ERROR)
        ex: execute.Executor = RayExecutor(ExecutionSpec("ray"), torch.device("cpu"))
    else:
        ex = execute.Processes(execute.worker_count(workers, torch.device("cpu")))
    start = time.perf_counter() - t0
    try:
        runner.run(cfg, root=root, executor=ex)
    finally:
        ex.close()
        if what.startswith("ray"):
            ray.shutdown()
    return time.perf_counter() - t0, start


def same_cells(a: Path, b: Path) -> tuple[int, int]:
    """(cells compared, cells whose every per-example row and probe is equal)."""
    with Store(a / "advlab.sqlite") as x, Store(b / "advlab.sqlite") as y:
        keys = [k for k, _ in x.run("tour")["cells"]]
        equal = 0
        for k in keys:
            ex, ey = x.examples(k), y.examples(k)
            px, py = x.probes(k), y.probes(k)
            equal += ex.keys() == ey.keys() and all(
                np.array_equal(ex[c], ey[c], equal_nan=ex[c].dtype.kind == "f") for c in ex) \
                and px.keys() == py.keys() and all(
                    np.array_equal(px[p][c], py[p][c]) for p in px for c in px[p])
        return len(keys), equal


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--runs", default="pool2,ray2")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="advlab-executors-"))
    times = {}
    for what in a.runs.split(","):
        times[what] = tour_run(work / what, a.n, what)
        print(f"{what}: {times[what][0]:7.1f} s (starting the executor: "
              f"{times[what][1]:.1f} s)", flush=True)
    if "pool2" in times and "ray2" in times:
        r, p = times["ray2"], times["pool2"]
        print(f"ray / pool, 2 workers: {r[0] / p[0]:.3f} (without ray.init: "
              f"{(r[0] - r[1]) / p[0]:.3f})")
        total, equal = same_cells(work / "pool2", work / "ray2")
        print(f"cells equal (pool2 vs ray2): {equal} of {total}")
    for kind in ("pool", "ray"):
        if f"{kind}1" in times and f"{kind}2" in times:
            print(f"{kind} speed-up 1 -> 2 workers: "
                  f"{times[f'{kind}1'][0] / times[f'{kind}2'][0]:.2f}x")


if __name__ == "__main__":
    main()
