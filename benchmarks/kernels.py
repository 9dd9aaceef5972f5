"""advlab's own CPU kernels against the torch operations they stand in for, side by side.

    python benchmarks/kernels.py [--sections maxpool euclidean] [--rounds 20] [--results DIR]

One process, one thread; each pair runs in interleaved rounds and keeps its fastest round
(common.race), so the load of other processes falls on both alike: the ratios carry over, the
seconds do not. Outputs are compared too.

Sections:
- maxpool: the zoo mnist-cnn's forward under torch.no_grad() with ``zoo.MaxPool2x2`` (the
  maximum of the four strided sub-grids) against the same model with ``nn.MaxPool2d(2)``,
  on 100 and 500 test images.
- euclidean: ``detectors.detector.euclidean`` (the expansion
  ||a||^2 - 2 a.b + ||b||^2, one matrix product) against ``torch.cdist`` (its default mode,
  the same expansion at these sizes), alone and with the backward pass w.r.t. the first
  argument (as an adaptive attack through a detector runs it), at the detectors' sizes: LID's
  batch of 500 against its reference of 500, kNN's 200 queries against 4,000 stored rows, at
  widths of the zoo CNN's layers (fc1 128, pooled conv2 1,600, conv2 7,744); the largest
  difference of the two results is given.

Each section's table is written to benchmarks/results/kernels-<section>.json (with the date,
torch version, threads and load average); the docstrings of the kernels point there.
"""
from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path

import torch
from common import RESULTS, race, save, table
from torch import Tensor, nn

import advlab
from advlab.detectors.detector import euclidean


def maxpool_rows(rounds: int) -> list[dict]:
    model = advlab.zoo.load("mnist-cnn")
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, advlab.zoo.MaxPool2x2):
            parent = plain.get_submodule(name.rpartition(".")[0])
            setattr(parent, name.rpartition(".")[2], nn.MaxPool2d(2))
    x, _ = advlab.data.load("mnist5k", split="test")
    rows = []
    for n in (100, 500):
        xs = x[:n]
        with torch.no_grad():
            best, out = race({"MaxPool2x2": lambda: model(xs), "nn.MaxPool2d": lambda: plain(xs)},
                             rounds)
        rows.append({"batch": n, "MaxPool2x2_s": best["MaxPool2x2"],
                     "nn.MaxPool2d_s": best["nn.MaxPool2d"],
                     "nn.MaxPool2d / MaxPool2x2": best["nn.MaxPool2d"] / best["MaxPool2x2"],
                     "equal": bool(torch.equal(out["MaxPool2x2"], out["nn.MaxPool2d"]))})
    return rows


def euclidean_rows(rounds: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for use, n, m, widths in (("LID", 500, 500, (128, 1600, 7744)),
                              ("kNN", 200, 4000, (128, 1600))):
        for width in widths:
            a = torch.rand(n, width, generator=g)
            b = torch.rand(m, width, generator=g)

            def backward(dist: Callable[[Tensor, Tensor], Tensor]) -> Callable[[], None]:
                def run() -> None:
                    dist(a.clone().requires_grad_(True), b).sum().backward()
                return run
            best, out = race({"euclidean": lambda: euclidean(a, b),
                              "cdist": lambda: torch.cdist(a, b),
                              "euclidean+bwd": backward(euclidean),
                              "cdist+bwd": backward(torch.cdist)}, rounds)
            rows.append({"use": use, "rows x rows x width": f"{n} x {m} x {width}",
                         **{f"{k}_s": v for k, v in best.items()},
                         "cdist / euclidean": best["cdist"] / best["euclidean"],
                         "with backward": best["cdist+bwd"] / best["euclidean+bwd"],
                         "max |difference|": (out["euclidean"] - out["cdist"]).abs().max().item()})
    return rows


SECTIONS = {"maxpool": maxpool_rows, "euclidean": euclidean_rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="folder for the JSON tables (another one for trial runs)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for key in args.sections:
        rows = SECTIONS[key](args.rounds)
        print(f"\n## {key}\n")
        print(table(rows, list(rows[0])), flush=True)
        print(save(args.results / f"kernels-{key}.json", rows, list(rows[0]), section=key,
                   rounds=args.rounds, timing="fastest of interleaved rounds, one process"))


if __name__ == "__main__":
    main()
