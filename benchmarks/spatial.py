"""Spatial-transformation attacks against the peers: the rotation/translation grid and stAdv.

    python benchmarks/spatial.py [--sections grid stadv] [--models mnist-cnn] [--n 100]
        [--peers foolbox] [--results DIR]

For each zoo model, on the first correctly classified images of the mnist5k test split, in
one process (torch.set_num_threads(1)): wall time, model rows per image, success re-checked
on the returned images, median sizes over the successes (common.compare).

Sections:
- grid: advlab's spatial grid (label-only, mildest transform first) vs foolbox
  SpatialAttack (first adversarial in its grid order), rotations up to 30 degrees (5 or 31
  on the grid), shifts up to 3 pixels (5 per axis); the L2 size of the change shows which
  transform each library returns.
- stadv: advlab stAdv at the paper's fixed tau 0.05 (200 Adam steps) and with the default
  per-example search over tau (3 x 100 steps), untargeted and towards random targets. No
  installed library has it; the row "paper" gives Xiao et al.'s MNIST success rates.

Each section's table is written to benchmarks/results/spatial-<section>-<model>.json (with
the date, torch version, load average, n and settings).
"""
from __future__ import annotations

import torch
from common import Counted, Run, Section, advlab_run, compare, measure, median_ok, parser, summarise
from common import peer as have
from torch import Tensor

import advlab


def grid_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    out = []
    for rotations in (5, 31):
        runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.get(
            "spatial", rotations=rotations, translations=5), model)}
        if have("foolbox"):
            import foolbox as fb

            atk = fb.attacks.SpatialAttack(max_translation=3, max_rotation=30,
                                           num_translations=5, num_rotations=rotations)
            fmodel = fb.PyTorchModel(model, bounds=(0, 1))
            runs["foolbox"] = lambda xx, yy, t: atk(fmodel, xx, yy)[1]
        rows = summarise([measure(k, f, model, x, y) for k, f in runs.items()], "l2")
        for r in rows:
            r["grid"] = f"{rotations}x5x5"
        out += rows
    return out


def stadv_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    shift = torch.randint(1, 10, y.shape, generator=torch.Generator().manual_seed(0))
    out = []
    for goal, search, target in (("untargeted", 1, None), ("targeted", 1, (y + shift) % 10),
                                 ("untargeted", 3, None), ("targeted", 3, (y + shift) % 10)):
        steps = 200 if search == 1 else 100
        atk, flows = advlab.attacks.StAdv(steps=steps, search_steps=search), []

        def run(xx: Tensor, yy: Tensor, t: Tensor | None) -> Tensor:
            res = atk(model, xx, yy, target=t)
            flows.append(res.info["flow_loss"])
            return res.x_adv
        r = measure("advlab", run, model, x, y, target)
        r.update(goal=goal, tau="0.05" if search == 1 else f"search x {search}",
                 flow=flows[-1])
        r.update(med_flow=median_ok(r, "flow"), med_l2=median_ok(r, "l2"))
        out.append(r)
    out.append({"lib": "paper", "goal": "Xiao et al. 2018, MNIST models A/B/C",
                "success": "99.95% / 99.98% / 100%"})
    return out


def main() -> None:
    args = parser(__doc__, ["grid", "stadv"], ["mnist-cnn"]).parse_args()
    compare("spatial", args, {
        "grid": Section(grid_rows, ["lib", "grid", "success", "med_l2", "med_l2_common",
                                    "n_common", "time_s", "fwd/img"], args.n),
        "stadv": Section(stadv_rows, ["lib", "goal", "tau", "success", "med_flow", "med_l2",
                                      "time_s", "fwd/img", "bwd/img"], args.n),
    })


if __name__ == "__main__":
    main()
