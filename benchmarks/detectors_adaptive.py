"""The detector-aware adaptive attack against the tour's detectors, as `advlab run` runs it.

    python benchmarks/detectors_adaptive.py [--steps 20 100] [--lam 1.0] [--n 100]
                                            [--detectors activation-knn ...]

Set-up of the built-in tour (``advlab.evaluation.config``): mnist-cnn, the tour's seven
detectors with their tour parameters, fitted on the first ``fit_n`` (2,000) mnist5k train
images (``advlab.evaluation.runner.build_detector``); the attacked images are the first n of
mnist5k test; each detector's threshold flags 5% of those clean images (the runner's
``DETECTION_FPR``). :class:`~advlab.detectors.DetectorAwarePGD` at Linf eps 0.3, seed 0.
"fooled and undetected" = misclassified and not flagged (score <= threshold), over the
correctly classified clean images: the report's "undetected" figure. One thread.

Measured
--------
(filled in below)
"""
from __future__ import annotations

import argparse
import time

import torch
from common import table

import advlab.zoo
from advlab.detectors import DetectorAwarePGD
from advlab.detectors.metrics import calibrate_threshold
from advlab.evaluation import config
from advlab.evaluation.results import DETECTION_FPR
from advlab.evaluation.runner import build_detector, load_data

EPS = 0.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--lam", type=float, default=config.ADAPTIVE["lam"])
    parser.add_argument("--n", type=int, default=100, help="attacked images (the tour's n)")
    parser.add_argument("--detectors", nargs="+", default=None,
                        help="tour detector names (default: all seven)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = config.load_config(None)
    model = advlab.zoo.load("mnist-cnn").eval()
    x, y = load_data(cfg.data, cfg.data.split, args.n)
    train = load_data(cfg.data, cfg.data.train_split, cfg.data.fit_n)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    rows = []
    for spec in cfg.detectors:
        if args.detectors and spec.name not in args.detectors:
            continue
        t0 = time.perf_counter()
        det = build_detector(spec, model, lambda: train)
        tau = calibrate_threshold(det.score(x), DETECTION_FPR)
        row: dict[str, object] = {"detector": spec.name, "fit s": round(time.perf_counter() - t0)}
        for steps in args.steps:
            t0 = time.perf_counter()
            res = DetectorAwarePGD(det, lam=args.lam, threshold=tau, eps=EPS, steps=steps,
                                   seed=cfg.seed)(model, x, y)
            flagged = det.score(res.x_adv) > tau
            evaded = res.success & ~flagged
            row[f"fooled {steps}"] = f"{res.success[ok].float().mean().item():.1%}"
            row[f"undetected {steps}"] = f"{evaded[ok].float().mean().item():.1%}"
            row[f"s {steps}"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(row, flush=True)
    cols = ["detector", "fit s", *[f"{k} {s}" for s in args.steps
                                   for k in ("fooled", "undetected", "s")]]
    print(f"\nDetectorAwarePGD, mnist-cnn, Linf eps {EPS}, lam {args.lam}, n {args.n} "
          f"({int(ok.sum())} correctly classified), threshold at {DETECTION_FPR:.0%} FPR")
    print(table(rows, cols))


if __name__ == "__main__":
    main()
