"""Sparse (L0) score-based attacks against the peers: OnePixel and Pixle.

    python benchmarks/blackbox_score_sparse.py [--sections onepixel pixle]
        [--models mnist-cnn] [--n 100] [--n-onepixel 50] [--peers torchattacks art]
        [--results DIR]

    python benchmarks/blackbox_score_sparse.py --sections onepixel --models mnist-mlp
    python benchmarks/blackbox_score_sparse.py --sections pixle --models mnist-cnn

For each zoo model, on the first correctly classified images of the mnist5k test split, in
one process (torch.set_num_threads(1)): wall time, model rows per image (every row is a
query), success re-checked on the returned images, the median number of changed pixel values
over the successes and over the images every library fooled (common.compare).

Sections:
- onepixel: advlab OnePixel vs torchattacks OnePixel and ART PixelAttack (th=1, es=1: the
  same differential evolution through scipy), 1 pixel, a population of 399, 10 generations,
  F = 0.5, no crossover; and 3 pixels (advlab, torchattacks). advlab runs the paper's
  DE/rand/1 and DE/best/1 (scipy's default, which both peers use, with F dithered).
- pixle: advlab Pixle vs torchattacks Pixle, both with the "random" mapping, patches of 2 to
  10 pixels a side, 20 restarts x 10 candidates.

Each section's table is written to benchmarks/results/blackbox_score_sparse-<section>-<model>.json
(with the date, torch version, load average, n and settings).
"""
from __future__ import annotations

from common import (
    Counted,
    Run,
    Section,
    advlab_run,
    art_run,
    compare,
    measure,
    median_ok,
    parser,
    summarise,
    torchattacks_run,
)
from common import peer as have
from torch import Tensor

import advlab


def onepixel_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    out = []
    for pixels in (1, 3):
        runs: dict[str, Run] = {f"advlab {s}": advlab_run(advlab.attacks.get(
            "onepixel", pixels=pixels, popsize=399, steps=10, strategy=s), model)
            for s in ("rand1", "best1")}
        if have("torchattacks"):
            import torchattacks as ta

            runs["torchattacks"] = torchattacks_run(ta.OnePixel(model, pixels=pixels,
                                                                steps=10, popsize=400))
        if have("art") and pixels == 1:
            from art.attacks.evasion import PixelAttack

            runs["art"] = art_run(lambda c: PixelAttack(c, th=1, es=1, max_iter=10,
                                                        verbose=False), model, x)
        rows = summarise([measure(k, f, model, x, y) for k, f in runs.items()], "l0")
        for r in rows:
            r["pixels"] = pixels
        out += rows
    return out


def pixle_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.get("pixle"), model)}
    if have("torchattacks"):
        import torchattacks as ta

        runs["torchattacks"] = torchattacks_run(ta.Pixle(model, x_dimensions=(2, 10),
                                                         y_dimensions=(2, 10), restarts=20,
                                                         max_iterations=10))
    rows = summarise([measure(k, f, model, x, y) for k, f in runs.items()], "l0")
    for r in rows:
        r["med_l2"] = median_ok(r, "l2")
    return rows


def main() -> None:
    ap = parser(__doc__, ["onepixel", "pixle"], ["mnist-cnn"])
    ap.add_argument("--n-onepixel", type=int, default=50)
    args = ap.parse_args()
    compare("blackbox_score_sparse", args, {
        "onepixel": Section(onepixel_rows, ["lib", "pixels", "success", "med_l0", "n_common",
                                            "time_s", "fwd/img"], args.n_onepixel),
        "pixle": Section(pixle_rows, ["lib", "success", "med_l0", "med_l0_common", "med_l2",
                                      "n_common", "time_s", "fwd/img"], args.n),
    })


if __name__ == "__main__":
    main()
