"""Zoo models trained from scratch: training time (wall and CPU) and clean test accuracy.

Runs ``advlab.zoo.load`` for each zoo model in a fresh temporary ``$ADVLAB_HOME`` (so every
model is trained exactly as on first use) and prints a table. Targets (issue 2): mnist-mlp
>= 92 % and mnist-cnn >= 96 % clean accuracy on mnist5k-test, each trained in < 60 s on 2 cores.

    python benchmarks/zoo_training.py [--threads 2] [--models mnist-mlp mnist-cnn]

Wall time depends on what else runs on the machine; the CPU time (all threads) does less.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from common import table

import advlab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=advlab.zoo.available())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as home:
        os.environ["ADVLAB_HOME"] = home
        for name in args.models:
            wall, cpu = time.perf_counter(), time.process_time()
            model = advlab.zoo.load(name)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            meta = advlab.zoo.read_metadata(advlab.zoo.cache_path(name))
            x, y = advlab.data.load(meta["training"]["dataset"], "test")
            rows.append({"model": name, "threads": args.threads,
                         "params": sum(p.numel() for p in model.parameters()),
                         "epochs": meta["training"]["epochs"],
                         "train wall s": meta["train_seconds"],
                         "load() wall s": round(wall, 2), "load() cpu s": round(cpu, 2),
                         "clean acc": advlab.zoo.accuracy(model, x, y)})
    print(table(rows, list(rows[0])))
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
