"""The attack families added for issue 16 against the peers that have them, side by side.

    python benchmarks/families.py [--sections fmn fmn-overshoot ddn ead spsa sparsefool spatial
        onepixel pixle stadv signopt] [--models mnist-cnn] [--n 100] [--n-ead 50] [--n-spsa 20]
        [--n-sparse 50] [--n-onepixel 50] [--n-signopt 30] [--peers foolbox torchattacks art]

    python benchmarks/families.py --sections onepixel signopt --models mnist-mlp
    python benchmarks/families.py --sections pixle stadv --models mnist-cnn

For each zoo model, on the first correctly classified images of the mnist5k test split, in
one process (torch.set_num_threads(1)), each library on the same images with equal settings:
wall time, model rows per image (forward, backward), success re-checked on the returned
images, and the median norm over the successes and over the images every library fooled
(helpers of whitebox_minnorm.py).

Sections:
- fmn: advlab FMN vs foolbox L0/L1/L2/LInfFMNAttack, 100 steps, alpha 1 annealed to 0.01,
  gamma 0.05 annealed to 0.001 (both libraries' defaults).
- fmn-overshoot: advlab FMN (L2, 100 steps) as shipped, whose jump to the linearised
  boundary is overshot by 1 + gamma_0, against the same attack without the overshoot (the
  paper's rule; a subclass here divides the overshoot out of the jump).
- ddn: advlab DDN vs foolbox DDNAttack, 100 steps, init_eps 1, gamma 0.05.
- ead: advlab EAD (EN and L1 rules) vs foolbox EADAttack (EN) and torchattacks EADL1 (L1,
  early abort, warm start across constants): beta 1e-3, 9 x 100 iterations, c0 1e-3,
  lr 1e-2.
- spsa: advlab SPSA vs torchattacks SPSA at Linf eps 0.2, delta 0.01, lr 0.01, 100 Adam
  steps of 64 Rademacher pairs (advlab's oracle counts 129 queries a step), on the model
  and on the model behind an 8-bit input quantisation that masks its gradient (PGD-40 given
  for reference).
- sparsefool: advlab SparseFool vs torchattacks SparseFool, lambda 3, overshoot 0.02, 20
  iterations (the L0 count is of changed pixel values).
- spatial: advlab's spatial grid (label-only, mildest transform first) vs foolbox
  SpatialAttack (first adversarial in its grid order), rotations up to 30 degrees (5 or 31
  on the grid), shifts up to 3 pixels (5 per axis); the L2 size of the change shows which
  transform each library returns.
- onepixel: advlab OnePixel vs torchattacks OnePixel and ART PixelAttack (th=1, es=1: the
  same differential evolution through scipy), 1 pixel, a population of 399, 10 generations,
  F = 0.5, no crossover; and 3 pixels (advlab, torchattacks). advlab runs the paper's
  DE/rand/1 and DE/best/1 (scipy's default, which both peers use, with F dithered).
- pixle: advlab Pixle vs torchattacks Pixle, both with the "random" mapping, patches of 2 to
  10 pixels a side, 20 restarts x 10 candidates.
- stadv: advlab stAdv at the paper's fixed tau 0.05 (200 Adam steps) and with the default
  per-example search over tau (3 x 100 steps), untargeted and towards random targets. No
  installed library has it; the row "paper" gives Xiao et al.'s MNIST success rates.
- signopt: advlab Sign-OPT, GeoDA and HopSkipJump (same batch starts) vs ART SignOPTAttack
  (its 100 random starting directions) and ART GeoDA (L2, sub_dim 10; with its default
  binary-search tolerance 0.1, which leaves its boundary points too far from the boundary
  for its probes to see it, and with 1e-4), 2,000 label queries each (--label-budget;
  results file families-signopt-<model>-<budget>.json).

The sections fmn-overshoot, onepixel, pixle, stadv and signopt write their tables to
benchmarks/results/families-<section>-<model>.json (with the settings, n, torch version and
the machine's load average); the figures below are from the earlier sections' runs.

Measured (2026-12-03, mnist-cnn, one process, a shared 2-core machine under load 10-18, so
times are ratios at best; success re-checked, medians over successes, "common": the images
every library fooled):

- FMN, n = 100: L0 100% / 11 vs foolbox 100% / 11 (11.4 s vs 11.4 s); L1 100% / 6.94
  (common 6.97) vs 82% / 7.01 (13.0 s vs 14.5 s); L2 100% / 1.53 vs 100% / 2.37 (14.2 s vs
  17.2 s; foolbox's L2 projection is a no-op, factor = min(1, norms / norms)); Linf 100% /
  0.139 vs 100% / 0.139 (15.1 s vs 45.1 s).
- DDN, n = 100: 100% / L2 1.524 vs foolbox 100% / 1.524 (46.9 s vs 48.8 s).
- EAD, n = 50: EN rule 100% / L1 11.88 = foolbox EN 100% / 11.88 (102 s vs 132 s); L1 rule
  100% / L1 9.57 (L0 101) vs torchattacks EADL1 100% / 10.79 (L0 359) at 3.1x its time
  (torchattacks aborts early: 299 backward rows per image against 900).
- SPSA, n = 20, eps 0.2: 75% vs torchattacks 75% on the model (157 s vs 284 s) and 75% vs
  75% behind the 8-bit quantisation (82 s vs 200 s), where PGD-40 reaches 0%.
- SparseFool, n = 50: 100% / L0 35 (L1 23.0) vs torchattacks 100% / L0 33 (L1 23.4),
  5.4 s vs 107.7 s.
- spatial, n = 100: 5x5x5 grid 100% (median L2 of the change 8.92, 16 queries per image,
  0.69 s) vs foolbox 100% (9.58, 27 forwards per image, 1.14 s); 31x5x5 grid 100% (8.25,
  83 queries, 5.8 s) vs foolbox 100% (9.58, 1.24 s).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from common import have as installed
from common import table
from torch import Tensor, nn
from whitebox_minnorm import (
    Meter,
    Run,
    advlab_run,
    art_run,
    correct_subset,
    foolbox_run,
    measure,
    summarise,
    torchattacks_run,
)

import advlab
from advlab.attacks.minnorm import Best

PEERS = ["foolbox", "torchattacks", "art"]
RESULTS = Path(__file__).parent / "results"
COLUMNS = {
    "fmn": ["lib", "norm", "success", "med", "med_common", "n_common", "time_s", "fwd/img",
            "bwd/img"],
    "fmn-overshoot": ["lib", "success", "med_l2", "med_l2_common", "n_common", "time_s",
                      "fwd/img", "bwd/img"],
    "ddn": ["lib", "success", "med_l2", "med_l2_common", "n_common", "time_s", "fwd/img",
            "bwd/img"],
    "ead": ["lib", "success", "med_l1", "med_l1_common", "med_l2", "med_l0", "n_common",
            "time_s", "fwd/img", "bwd/img"],
    "spsa": ["lib", "model", "success", "time_s", "fwd/img"],
    "sparsefool": ["lib", "success", "med_l0", "med_l0_common", "med_l1", "n_common", "time_s",
                   "fwd/img", "bwd/img"],
    "spatial": ["lib", "grid", "success", "med_l2", "med_l2_common", "n_common", "time_s",
                "fwd/img"],
    "onepixel": ["lib", "pixels", "success", "med_l0", "n_common", "time_s", "fwd/img"],
    "pixle": ["lib", "success", "med_l0", "med_l0_common", "med_l2", "n_common", "time_s",
              "fwd/img"],
    "stadv": ["lib", "goal", "tau", "success", "med_flow", "med_l2", "time_s", "fwd/img",
              "bwd/img"],
    "signopt": ["lib", "success", "med_l2", "med_l2_common", "n_common", "time_s", "fwd/img"],
}


def have(peer: str) -> bool:
    return peer in PEERS and installed(peer)


def with_l1(rows: list[dict], x: Tensor) -> list[dict]:
    for r in rows:
        r["l1"] = (r["x_adv"] - x).flatten(1).abs().sum(1)
    return rows


def fmn_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
    out = []
    for norm in ("l0", "l1", "l2", "linf"):
        runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.FMN(norm=norm), model)}
        if have("foolbox"):
            import foolbox as fb

            cls = {"l0": fb.attacks.L0FMNAttack, "l1": fb.attacks.L1FMNAttack,
                   "l2": fb.attacks.L2FMNAttack, "linf": fb.attacks.LInfFMNAttack}[norm]
            runs["foolbox"] = foolbox_run(cls(steps=100), model)
        rows = with_l1([measure(k, f, model, x, y) for k, f in runs.items()], x)
        for r in summarise(rows, norm):
            r.update(norm=norm, med=r[f"med_{norm}"], med_common=r[f"med_{norm}_common"])
            out.append(r)
    return out


class FMNNoOvershoot(advlab.attacks.FMN):
    """FMN whose jump to the linearised boundary is not overshot (the paper's rule)."""

    def new_radius(self, radius: Tensor, adversarial: Tensor, best: Best, size: Tensor,
                   margin: Tensor, grad: Tensor, gamma: float) -> Tensor:
        new = super().new_radius(radius, adversarial, best, size, margin, grad, gamma)
        if self.norm == "l0":
            return new
        jumped = ~adversarial & ~best.found
        return torch.where(jumped, new / (1 + self.gamma), new)


def fmn_overshoot_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
    runs = {"advlab (overshoot 1 + gamma_0)": advlab.attacks.FMN(norm="l2"),
            "without the overshoot": FMNNoOvershoot(norm="l2")}
    return summarise([measure(k, advlab_run(a, model), model, x, y) for k, a in runs.items()],
                     "l2")


def ddn_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
    runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.DDN(), model)}
    if have("foolbox"):
        import foolbox as fb

        runs["foolbox"] = foolbox_run(fb.attacks.DDNAttack(steps=100), model)
    return summarise([measure(k, f, model, x, y) for k, f in runs.items()], "l2")


def ead_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
    runs: dict[str, Run] = {
        "advlab EN": advlab_run(advlab.attacks.EAD(rule="EN"), model),
        "advlab L1": advlab_run(advlab.attacks.EAD(rule="L1"), model),
    }
    if have("foolbox"):
        import foolbox as fb

        runs["foolbox EN"] = foolbox_run(fb.attacks.EADAttack(
            binary_search_steps=9, steps=100, initial_stepsize=1e-2, initial_const=1e-3,
            regularization=1e-3, decision_rule="EN", abort_early=False), model)
    if have("torchattacks"):
        import torchattacks as ta

        runs["torchattacks L1"] = torchattacks_run(ta.EADL1(
            model, kappa=0, lr=1e-2, binary_search_steps=9, max_iterations=100,
            initial_const=1e-3, beta=1e-3))
    rows = with_l1([measure(k, f, model, x, y) for k, f in runs.items()], x)
    rows = summarise(rows, "l1")
    for r in rows:
        for norm in ("l2", "l0"):
            r[f"med_{norm}"] = r[norm][r["ok"]].median().item() if r["ok"].any() else None
    return rows


class Quantized(nn.Module):
    """The model on 8-bit inputs: round() has zero gradient, so autograd sees nothing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * 255) / 255)


def spsa_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
    out = []
    for label, target in (("plain", model), ("8-bit", Meter(Quantized(model.model)).eval())):
        runs: dict[str, Run] = {
            "advlab PGD-40": advlab_run(advlab.attacks.PGD(eps=0.2, steps=40), target),
            "advlab SPSA": advlab_run(advlab.attacks.get(
                "spsa", eps=0.2, steps=100, n_samples=64, delta=0.01, lr=0.01), target),
        }
        if have("torchattacks"):
            import torchattacks as ta

            runs["torchattacks SPSA"] = torchattacks_run(ta.SPSA(
                target, eps=0.2, delta=0.01, lr=0.01, nb_iter=100, nb_sample=64,
                max_batch_size=64))
        for k, f in runs.items():
            r = measure(k, f, target, x, y)
            r["model"] = label
            out.append(r)
    return out


def sparsefool_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
    runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.SparseFool(), model)}
    if have("torchattacks"):
        import torchattacks as ta

        runs["torchattacks"] = torchattacks_run(ta.SparseFool(model, steps=20, lam=3,
                                                              overshoot=0.02))
    rows = summarise(with_l1([measure(k, f, model, x, y) for k, f in runs.items()], x), "l0")
    for r in rows:
        r["med_l1"] = r["l1"][r["ok"]].median().item() if r["ok"].any() else None
    return rows


def spatial_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
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


def onepixel_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
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


def pixle_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
    runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.get("pixle"), model)}
    if have("torchattacks"):
        import torchattacks as ta

        runs["torchattacks"] = torchattacks_run(ta.Pixle(model, x_dimensions=(2, 10),
                                                         y_dimensions=(2, 10), restarts=20,
                                                         max_iterations=10))
    rows = summarise([measure(k, f, model, x, y) for k, f in runs.items()], "l0")
    for r in rows:
        r["med_l2"] = r["l2"][r["ok"]].median().item() if r["ok"].any() else None
    return rows


def stadv_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
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
        ok = r["ok"]
        med = (lambda v: v[ok].median().item() if ok.any() else None)  # noqa: E731
        r.update(goal=goal, tau="0.05" if search == 1 else f"search x {search}",
                 med_flow=med(flows[-1]), med_l2=med(r["l2"]))
        out.append(r)
    out.append({"lib": "paper", "goal": "Xiao et al. 2018, MNIST models A/B/C",
                "success": "99.95% / 99.98% / 100%"})
    return out


def signopt_rows(model: Meter, x: Tensor, y: Tensor, budget: int = 2000) -> list[dict]:
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


def save(section: str, model: str, rows: list[dict], settings: dict) -> None:
    """The section's table as JSON in benchmarks/results (columns of COLUMNS only)."""
    keep = [{c: r[c] for c in COLUMNS[section] if c in r} for r in rows]
    RESULTS.mkdir(exist_ok=True)
    tail = f"-{settings['budget']}" if "budget" in settings else ""
    path = RESULTS / f"families-{section}-{model}{tail}.json"
    path.write_text(json.dumps({
        "section": section, "model": model, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                 time.gmtime()),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(), **settings, "rows": keep}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", nargs="+", default=list(COLUMNS))
    ap.add_argument("--models", nargs="+", default=["mnist-cnn"])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n-ead", type=int, default=50)
    ap.add_argument("--n-spsa", type=int, default=20)
    ap.add_argument("--n-sparse", type=int, default=50)
    ap.add_argument("--n-onepixel", type=int, default=50)
    ap.add_argument("--n-signopt", type=int, default=30)
    ap.add_argument("--label-budget", type=int, default=2000)
    ap.add_argument("--peers", nargs="*", default=PEERS, help="peer libraries to run")
    args = ap.parse_args()
    PEERS[:] = args.peers
    torch.set_num_threads(1)
    for name in args.models:
        model = Meter(advlab.zoo.load(name)).eval()
        x, y = correct_subset(model.model, max(args.n, args.n_ead, args.n_spsa, args.n_sparse,
                                               args.n_onepixel, args.n_signopt))
        sizes = {"onepixel": args.n_onepixel, "signopt": args.n_signopt}
        for sec in args.sections:
            n = sizes.get(sec, args.n)
            if sec == "fmn":
                rows = fmn_rows(model, x[:args.n], y[:args.n])
            elif sec == "ddn":
                rows = ddn_rows(model, x[:args.n], y[:args.n])
            elif sec == "ead":
                rows = ead_rows(model, x[:args.n_ead], y[:args.n_ead])
            elif sec == "sparsefool":
                rows = sparsefool_rows(model, x[:args.n_sparse], y[:args.n_sparse])
            elif sec == "spsa":
                rows = spsa_rows(model, x[:args.n_spsa], y[:args.n_spsa])
            elif sec == "spatial":
                rows = spatial_rows(model, x[:args.n], y[:args.n])
            else:
                settings = {"n": n, "images": "first correctly classified of mnist5k test"}
                if sec == "signopt":
                    rows = signopt_rows(model, x[:n], y[:n], args.label_budget)
                    settings["budget"] = args.label_budget
                else:
                    make = {"onepixel": onepixel_rows, "pixle": pixle_rows,
                            "stadv": stadv_rows, "fmn-overshoot": fmn_overshoot_rows}[sec]
                    rows = make(model, x[:n], y[:n])
                save(sec, name, rows, settings)
            print(f"\n## {sec} on {name}\n")
            print(table(rows, COLUMNS[sec]), flush=True)


if __name__ == "__main__":
    main()
