"""Label-only minimum-norm attacks against the peers: Sign-OPT, GeoDA and HopSkipJump.

    python benchmarks/blackbox_label_minnorm.py [--models mnist-cnn] [--n 30]
        [--label-budget 2000] [--peers art] [--results DIR]

    python benchmarks/blackbox_label_minnorm.py --models mnist-mlp mnist-cnn

For each zoo model, on the first correctly classified images of the mnist5k test split, in
one process (torch.set_num_threads(1)): wall time, model rows per image (every row is a
label query), success re-checked on the returned images, the median L2 over the successes
and over the images every library fooled (common.compare).

Section signopt: advlab Sign-OPT, GeoDA and HopSkipJump (same batch starts) vs ART
SignOPTAttack (its 100 random starting directions) and ART GeoDA (L2, sub_dim 10; with its
default binary-search tolerance 0.1, which leaves its boundary points too far from the
boundary for its probes to see it, and with 1e-4), --label-budget label queries each.
HopSkipJump against ART's and foolbox's at equal counted queries is blackbox_label.py's.

The table is written to benchmarks/results/blackbox_label_minnorm-signopt-<model>-<budget>.json
(with the date, torch version, load average, n and settings).
"""
from __future__ import annotations

import os
import tempfile

from common import Counted, Run, Section, advlab_run, art_run, compare, measure, parser, summarise
from common import peer as have
from torch import Tensor

import advlab


def signopt_rows(model: Counted, x: Tensor, y: Tensor, budget: int) -> list[dict]:
    runs: dict[str, Run] = {
        "advlab Sign-OPT": advlab_run(advlab.attacks.get("signopt", max_queries=budget), model),
        "advlab GeoDA": advlab_run(advlab.attacks.get("geoda", max_queries=budget), model),
        "advlab HopSkipJump": advlab_run(advlab.attacks.get(
            "hopskipjump", max_queries=budget, init="auto"), model),
    }
    if have("art"):
        import numpy as np
        from art.attacks.evasion import GeoDA, SignOPTAttack

        if not hasattr(np, "mat"):  # ART 1.20.1's GeoDA calls np.mat, gone in NumPy 2
            np.mat = np.asmatrix
        runs["art Sign-OPT"] = art_run(lambda c: SignOPTAttack(
            c, targeted=False, query_limit=budget, k=200, num_trial=100, verbose=False),
            model, x)
        for tol in (0.1, 1e-4):  # its default binary-search tolerance, and a fine one
            runs[f"art GeoDA tol {tol:g}"] = art_run(lambda c, t=tol: GeoDA(
                c, norm=2, sub_dim=10, max_iter=budget, bin_search_tol=t, verbose=False),
                model, x)
    with tempfile.TemporaryDirectory() as tmp:  # ART's GeoDA saves its DCT basis in the cwd
        here = os.getcwd()
        os.chdir(tmp)
        try:
            rows = [measure(k, f, model, x, y) for k, f in runs.items()]
        finally:
            os.chdir(here)
    return summarise(rows, "l2")


def main() -> None:
    ap = parser(__doc__, ["signopt"], ["mnist-cnn"])
    ap.set_defaults(n=30)
    ap.add_argument("--label-budget", type=int, default=2000)
    args = ap.parse_args()
    budget = args.label_budget
    compare("blackbox_label_minnorm", args, {"signopt": Section(
        lambda m, x, y: signopt_rows(m, x, y, budget),
        ["lib", "success", "med_l2", "med_l2_common", "n_common", "time_s", "fwd/img"], args.n,
        {"budget": budget}, tail=f"-{budget}")})


if __name__ == "__main__":
    main()
