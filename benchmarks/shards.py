"""One large cell spread over shards: AutoAttack on 1,000 MNIST images, computed whole
(one process) and in shards (on the process pool), gives the same figure and rows.

    PYTHONPATH=src python benchmarks/shards.py [--n 1000] [--shard-size 100] [--eps 0.1]

Both runs in this process, on the zoo's mnist-mlp (trained on first use, cached), one torch
thread each; prints both robust accuracies, whether every stored per-example row is equal,
and both wall times.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from advlab.evaluation import execute, results, runner
from advlab.evaluation.config import config_from_dict
from advlab.evaluation.store import Store


def run(root: Path, n: int, eps: float, shard_size: int | None, ex: execute.Executor
        ) -> tuple[float, dict]:
    cfg = config_from_dict({
        "name": "big", "batch_size": 100, "shard_size": shard_size,
        "data": {"name": "mnist5k", "n": n}, "models": ["mnist-mlp"],
        "attacks": [{"name": "autoattack", "eps": eps}], "probes": {"shifts": [],
                                                                   "noise": []},
        "adaptive": {"enabled": False}, "sanity": {"enabled": False}})
    t0 = time.perf_counter()
    runner.run(cfg, root=root, executor=ex)
    wall = time.perf_counter() - t0
    with Store(root / "advlab.sqlite") as s:
        (key, _), = s.run("big")["cells"]
        cell = results.collect(s, "big")["cells"][0]
        return wall, {"robust": cell["robust_accuracy"], "rows": s.examples(key),
                      "shards": len(s.stored_shards(key)), "gallery": s.gallery(key)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="advlab-shards-"))
    t1, whole = run(work / "whole", a.n, a.eps, None, execute.Inline())
    t2, parts = run(work / "sharded", a.n, a.eps, a.shard_size, execute.Processes(a.workers))
    same = all(np.array_equal(whole["rows"][c], parts["rows"][c],
                              equal_nan=whole["rows"][c].dtype.kind == "f")
               for c in whole["rows"])
    gal = [(i, x.tobytes(), xa.tobytes()) for i, x, xa in whole["gallery"]] == \
        [(i, x.tobytes(), xa.tobytes()) for i, x, xa in parts["gallery"]]
    print(f"AutoAttack (linf, eps={a.eps}) on mnist-mlp, {a.n} images, batch 100")
    print(f"  whole cell, 1 process:         robust accuracy {whole['robust']:.4f}  "
          f"{t1:7.1f} s")
    print(f"  {parts['shards']} shards of {a.shard_size}, {a.workers} workers: robust "
          f"accuracy {parts['robust']:.4f}  {t2:7.1f} s")
    print(f"  every per-example row equal: {same}; gallery equal: {gal}")


if __name__ == "__main__":
    main()
