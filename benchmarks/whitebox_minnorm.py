"""Minimum-norm and optimisation white-box attacks against the peers, side by side.

    python benchmarks/whitebox_minnorm.py [--sections deepfool cw cw-targeted cw-box cw-linf jsma
        lbfgs lbfgs-warm fab fmn fmn-overshoot ddn ead sparsefool sparsefool-fallback]
        [--models mnist-cnn mnist-mlp] [--n 100] [--n-targeted 20] [--n-jsma 100] [--n-ead 50]
        [--n-sparse 50] [--cw-steps 100] [--peers foolbox art torchattacks] [--results DIR]

For each zoo model, on the first correctly classified images of the mnist5k test split, in
one process (torch.set_num_threads(1)): wall time, model evaluations (forward rows and
backward rows per image, counted by a wrapper around the model, the same for every library),
success re-checked on the returned images, median / mean norms over the successes, and the
median norm on the images that EVERY library fooled (peers count failures inconsistently: some
return the input, some a blank image).

Sections:
- deepfool: advlab DeepFool (L2) vs foolbox L2DeepFoolAttack, ART DeepFool, torchattacks
  DeepFool (50 steps, overshoot 0.02, 10 candidate classes), plus mean ||r||2/||x||2.
- cw: C&W L2 untargeted, 9 binary-search steps x --cw-steps Adam steps, c0 = 1e-2, lr 0.01
  for advlab, foolbox and ART; torchattacks (no binary search, c = 1) gets 9 x --cw-steps
  steps.
- cw-targeted: C&W L2 with each of the 9 other targets for --n-targeted images; best /
  average / worst case over targets (Carlini & Wagner's MNIST: 1.36 / 1.76 / 2.60).
- cw-box: the box constraint's cost: tanh change of variables (the paper's) vs projected Adam.
- jsma: all 9 targets for --n-jsma images, theta = 1, gamma = 0.145, vs ART SaliencyMapMethod
  and torchattacks JSMA; advlab on the softmax outputs (default), on the logits, and with
  single pixels instead of pairs.
- cw-linf: C&W Linf's Adam steps per solve and initial c: 30 steps with c0 0.1 (the default)
  vs 100 steps with c0 0.01.
- lbfgs: L-BFGS targeted at the class DeepFool reaches (same images), and at random targets.
- lbfgs-warm: L-BFGS aimed at DeepFool's class, each c warm-started from the previous
  minimiser (the default) vs started from r = 0, with 10 and 20 iterations.
- fmn: advlab FMN vs foolbox L0/L1/L2/LInfFMNAttack, 100 steps, alpha 1 annealed to 0.01,
  gamma 0.05 annealed to 0.001 (both libraries' defaults). foolbox 3.3.4's L2 projection is
  a no-op (its factor is min(1, norms / norms)), which is why its L2 sizes are larger.
- fmn-overshoot: advlab FMN (L2, 100 steps) as shipped, whose jump to the linearised
  boundary is overshot by 1 + gamma_0, against the same attack without the overshoot (the
  paper's rule; a subclass here divides the overshoot out of the jump).
- ddn: advlab DDN vs foolbox DDNAttack, 100 steps, init_eps 1, gamma 0.05.
- ead: advlab EAD (EN and L1 rules) vs foolbox EADAttack (EN) and torchattacks EADL1 (L1,
  early abort, warm start across constants): beta 1e-3, 9 x 100 iterations, c0 1e-3,
  lr 1e-2.
- sparsefool: advlab SparseFool vs torchattacks SparseFool, lambda 3, overshoot 0.02, 20
  iterations (the L0 count is of changed pixel values).
- sparsefool-fallback: advlab SparseFool (50 iterations) as shipped, which takes the plane at
  DeepFool's point x_DF where the plane at x_B does not separate the iterate from x_B,
  against the same attack without that fallback (a subclass here); "stuck": images not
  fooled after the 50 iterations.

Each section's table is written to benchmarks/results/whitebox_minnorm-<section>-<model>.json
(with the date, torch version, load average, n and settings); the docstrings of the attacks
point there.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from common import (
    Counted,
    Run,
    Section,
    advlab_run,
    art_run,
    compare,
    foolbox_run,
    measure,
    median_ok,
    parser,
    summarise,
    torchattacks_run,
)
from common import peer as have
from torch import Tensor

import advlab
from advlab.attacks.minnorm import Best

# ------------------------------------------------------------------------------ sections


def deepfool_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.get("deepfool"), model)}
    if have("foolbox"):
        import foolbox as fb

        runs["foolbox"] = foolbox_run(
            fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02), model)
    if have("art"):
        from art.attacks.evasion import DeepFool

        runs["art"] = art_run(lambda c: DeepFool(c, max_iter=50, epsilon=0.02, nb_grads=10,
                                                 batch_size=len(x), verbose=False), model, x)
    if have("torchattacks"):
        import torchattacks as ta

        runs["torchattacks"] = torchattacks_run(ta.DeepFool(model, steps=50, overshoot=0.02))
    rows = summarise([measure(k, f, model, x, y) for k, f in runs.items()], "l2")
    xn = x.flatten(1).norm(dim=1)
    for r in rows:
        r["rho"] = (r["l2"] / xn)[r["ok"]].mean().item()
    return rows


def cw_rows(model: Counted, x: Tensor, y: Tensor, steps: int) -> list[dict]:
    runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.get("cw-l2", steps=steps),
                                                 model)}
    if have("foolbox"):
        import foolbox as fb

        runs["foolbox"] = foolbox_run(fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=9, steps=steps, stepsize=0.01, initial_const=1e-2), model)
    if have("art"):
        from art.attacks.evasion import CarliniL2Method

        runs["art"] = art_run(lambda c: CarliniL2Method(
            c, learning_rate=0.01, binary_search_steps=9, max_iter=steps, initial_const=1e-2,
            batch_size=len(x), verbose=False), model, x)
    if have("torchattacks"):
        import torchattacks as ta

        runs["torchattacks"] = torchattacks_run(ta.CW(model, c=1, steps=9 * steps, lr=0.01))
    return summarise([measure(k, f, model, x, y) for k, f in runs.items()], "l2")


def all_targets(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each image repeated for each of its K - 1 other classes, with those targets."""
    k = 10
    xs = x.repeat_interleave(k - 1, 0)
    ys = y.repeat_interleave(k - 1)
    shift = torch.arange(1, k).repeat(len(x))
    return xs, ys, (ys + shift) % k


def cw_targeted_rows(model: Counted, x: Tensor, y: Tensor, steps: int) -> list[dict]:
    xs, ys, ts = all_targets(x, y)
    r = measure("advlab", advlab_run(advlab.attacks.get("cw-l2", steps=steps), model),
                model, xs, ys, ts)
    l2 = torch.where(r["ok"], r["l2"], torch.inf).view(len(x), -1)
    r.update({"best": l2.amin(1).mean().item(), "average": l2.mean(1).mean().item(),
              "worst": l2.amax(1).mean().item()})
    return [r, {"lib": "C&W 2017 (paper)", "success": 1.0, "best": 1.36, "average": 1.76,
                "worst": 2.60}]


def cw_box_rows(model: Counted, x: Tensor, y: Tensor, steps: int) -> list[dict]:
    settings = {"clip (projected Adam)": {"box": "clip"},
                "tanh, eps 1e-6 (paper)": {"box": "tanh"},
                "tanh, eps 1e-2": {"box": "tanh", "tanh_eps": 1e-2},
                "tanh, eps 1e-6, 10x steps": {"box": "tanh", "steps_factor": 10}}
    rows = []
    for name, kw in settings.items():
        kw = dict(kw)
        s = steps * kw.pop("steps_factor", 1)
        rows.append(measure(name, advlab_run(advlab.attacks.get("cw-l2", steps=s, **kw), model),
                            model, x, y))
    return summarise(rows, "l2")


def jsma_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    xs, ys, ts = all_targets(x, y)
    runs: dict[str, Run] = {
        "advlab": advlab_run(advlab.attacks.get("jsma"), model),
        "advlab, logits (JSMA-Z)": advlab_run(advlab.attacks.get("jsma", output="logits"),
                                              model),
        "advlab, single pixels": advlab_run(advlab.attacks.get("jsma", pairs=False), model)}
    if have("art"):
        from art.attacks.evasion import SaliencyMapMethod

        runs["art"] = art_run(lambda c: SaliencyMapMethod(c, theta=1.0, gamma=0.145,
                                                          batch_size=len(xs), verbose=False),
                              model, x)
    if have("torchattacks"):
        import torchattacks as ta

        runs["torchattacks"] = torchattacks_run(ta.JSMA(model, theta=1.0, gamma=0.145))
    rows = summarise([measure(k, f, model, xs, ys, ts) for k, f in runs.items()], "l0")
    for r in rows:
        r["pixels_%"] = 100 * r["l0"][r["ok"]].mean().item() / x[0].numel()
    return rows


def lbfgs_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    df = measure("deepfool", advlab_run(advlab.attacks.get("deepfool"), model), model, x, y)
    with torch.no_grad():
        t = model.model(df["x_adv"]).argmax(1)
    ok = df["ok"]
    lb = measure("lbfgs (DeepFool's class)", advlab_run(advlab.attacks.get("lbfgs"), model),
                 model, x[ok], y[ok], t[ok])
    g = torch.Generator().manual_seed(0)
    rand = (y + torch.randint(1, 10, y.shape, generator=g)) % 10
    lr = measure("lbfgs (random targets)", advlab_run(advlab.attacks.get("lbfgs"), model),
                 model, x, y, rand)
    fg = measure("fgsm eps=0.3 (L2 of successes)",
                 advlab_run(advlab.attacks.get("fgsm", eps=0.3), model), model, x, y)
    for r in (df, lb, lr, fg):
        r["mean_l2"] = r["l2"][r["ok"]].mean().item()
        r["med_l2"] = r["l2"][r["ok"]].median().item()
    lb["ratio_to_deepfool"] = lb["mean_l2"] / df["l2"][ok].mean().item()
    return [df, lb, lr, fg]


def cw_linf_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    """C&W Linf at its default (30 Adam steps per solve, c0 0.1) vs 100 steps from c0 0.01."""
    settings = {"steps 30, c0 0.1 (default)": {"steps": 30, "c0": 0.1},
                "steps 100, c0 0.01": {"steps": 100, "c0": 0.01}}
    return summarise([measure(k, advlab_run(advlab.attacks.get("cw-linf", **kw), model),
                              model, x, y) for k, kw in settings.items()], "linf")


def lbfgs_warm_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    """L-BFGS aimed at DeepFool's class: warm start (the default) vs cold, 10 and 20
    iterations per value of c."""
    df = measure("deepfool", advlab_run(advlab.attacks.get("deepfool"), model), model, x, y)
    with torch.no_grad():
        t = model.model(df["x_adv"]).argmax(1)
    ok = df["ok"]
    settings = {"warm, 10 iterations (default)": {"warm_start": True, "max_iter": 10},
                "cold, 10 iterations": {"warm_start": False, "max_iter": 10},
                "cold, 20 iterations": {"warm_start": False, "max_iter": 20}}
    return summarise([measure(k, advlab_run(advlab.attacks.get("lbfgs", **kw), model),
                              model, x[ok], y[ok], t[ok]) for k, kw in settings.items()], "l2")


def fab_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    """Untargeted Linf FAB (100 steps, 1 restart) against torchattacks' FAB at equal settings,
    with DeepFool-Linf as the reference it should beat."""
    runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.get("fab", steps=100), model),
                            "advlab deepfool-linf": advlab_run(
                                advlab.attacks.get("deepfool-linf"), model)}
    if have("torchattacks"):
        import torchattacks as ta

        runs["torchattacks"] = torchattacks_run(ta.FAB(model, norm="Linf", eps=1.0, steps=100,
                                                       n_restarts=1, n_classes=10))
    return summarise([measure(k, f, model, x, y) for k, f in runs.items()], "linf")


def fmn_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    out = []
    for norm in ("l0", "l1", "l2", "linf"):
        runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.FMN(norm=norm), model)}
        if have("foolbox"):
            import foolbox as fb

            cls = {"l0": fb.attacks.L0FMNAttack, "l1": fb.attacks.L1FMNAttack,
                   "l2": fb.attacks.L2FMNAttack, "linf": fb.attacks.LInfFMNAttack}[norm]
            runs["foolbox"] = foolbox_run(cls(steps=100), model)
        for r in summarise([measure(k, f, model, x, y) for k, f in runs.items()], norm):
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


def fmn_overshoot_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    runs = {"advlab (overshoot 1 + gamma_0)": advlab.attacks.FMN(norm="l2"),
            "without the overshoot": FMNNoOvershoot(norm="l2")}
    return summarise([measure(k, advlab_run(a, model), model, x, y) for k, a in runs.items()],
                     "l2")


def ddn_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.DDN(), model)}
    if have("foolbox"):
        import foolbox as fb

        runs["foolbox"] = foolbox_run(fb.attacks.DDNAttack(steps=100), model)
    return summarise([measure(k, f, model, x, y) for k, f in runs.items()], "l2")


def ead_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
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
    rows = summarise([measure(k, f, model, x, y) for k, f in runs.items()], "l1")
    for r in rows:
        r.update(med_l2=median_ok(r, "l2"), med_l0=median_ok(r, "l0"))
    return rows


def sparsefool_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    runs: dict[str, Run] = {"advlab": advlab_run(advlab.attacks.SparseFool(), model)}
    if have("torchattacks"):
        import torchattacks as ta

        runs["torchattacks"] = torchattacks_run(ta.SparseFool(model, steps=20, lam=3,
                                                              overshoot=0.02))
    rows = summarise([measure(k, f, model, x, y) for k, f in runs.items()], "l0")
    for r in rows:
        r["med_l1"] = median_ok(r, "l1")
    return rows


class SparseFoolNoFallback(advlab.attacks.SparseFool):
    """SparseFool on the plane at x_B always, even where it does not separate x_i from x_B."""

    def plane(self, model: Counted, x_i: Tensor, x_df: Tensor, x_b: Tensor,
              y: Tensor) -> tuple[Tensor, Tensor]:
        return x_b, self.normal(model, x_b, y)


def sparsefool_fallback_rows(model: Counted, x: Tensor, y: Tensor) -> list[dict]:
    """SparseFool with 50 iterations, as shipped and without the fallback to the plane at
    x_DF: "stuck" counts the images still not fooled after the 50."""
    runs = {"advlab (plane at x_DF where x_B's does not separate)": advlab.attacks.SparseFool(
        max_iter=50), "without the fallback": SparseFoolNoFallback(max_iter=50)}
    rows = []
    for name, atk in runs.items():
        iterations = []

        def run(xx: Tensor, yy: Tensor, t: Tensor | None, atk=atk) -> Tensor:  # noqa: ANN001
            res = atk(model, xx, yy)
            iterations.append(res.info["iterations"])
            return res.x_adv
        r = measure(name, run, model, x, y)
        r.update(stuck=int((~r["ok"]).sum()),
                 mean_iterations=iterations[-1].float().mean().item())
        rows.append(r)
    return summarise(rows, "l0")


COST = ["lib", "time_s", "fwd/img", "bwd/img", "success"]


def main() -> None:
    ap = parser(__doc__, ["deepfool", "cw", "cw-targeted", "cw-box", "jsma", "lbfgs", "cw-linf",
                          "lbfgs-warm", "fab", "fmn", "fmn-overshoot", "ddn", "ead",
                          "sparsefool", "sparsefool-fallback"], ["mnist-cnn", "mnist-mlp"])
    ap.add_argument("--n-targeted", type=int, default=20)
    ap.add_argument("--n-jsma", type=int, default=100)
    ap.add_argument("--n-ead", type=int, default=50)
    ap.add_argument("--n-sparse", type=int, default=50)
    ap.add_argument("--cw-steps", type=int, default=100)
    args = ap.parse_args()
    n, steps = args.n, args.cw_steps

    def norms(norm: str, *extra: str) -> list[str]:
        return [*COST, f"med_{norm}", f"mean_{norm}", f"med_{norm}_common", "n_common", *extra]

    def cw(rows: Callable[[Counted, Tensor, Tensor, int], list[dict]]) -> Callable:
        return lambda m, x, y: rows(m, x, y, steps)

    compare("whitebox_minnorm", args, {
        "deepfool": Section(deepfool_rows, norms("l2", "rho"), n),
        "cw": Section(cw(cw_rows), norms("l2"), n, {"cw_steps": steps}),
        "cw-targeted": Section(cw(cw_targeted_rows), [*COST, "best", "average", "worst"],
                               args.n_targeted, {"cw_steps": steps}),
        "cw-box": Section(cw(cw_box_rows), norms("l2"), n, {"cw_steps": steps}),
        "jsma": Section(jsma_rows, [*COST, "pixels_%", *norms("l0")[5:]], args.n_jsma,
                        {"targets": "all 9 per image"}),  # n x 9 attacks
        "lbfgs": Section(lbfgs_rows, [*COST, "med_l2", "mean_l2", "ratio_to_deepfool"], n),
        "cw-linf": Section(cw_linf_rows, norms("linf"), n),
        "lbfgs-warm": Section(lbfgs_warm_rows, norms("l2"), n),
        "fab": Section(fab_rows, norms("linf"), n),
        "fmn": Section(fmn_rows, [*COST, "norm", "med", "med_common", "n_common"], n),
        "fmn-overshoot": Section(fmn_overshoot_rows, norms("l2"), n),
        "ddn": Section(ddn_rows, norms("l2"), n),
        "ead": Section(ead_rows, [*norms("l1"), "med_l2", "med_l0"], args.n_ead),
        "sparsefool": Section(sparsefool_rows, [*norms("l0"), "med_l1"], args.n_sparse),
        "sparsefool-fallback": Section(sparsefool_fallback_rows,
                                       [*norms("l0"), "stuck", "mean_iterations"], args.n_sparse,
                                       {"max_iter": 50}),
    })


if __name__ == "__main__":
    main()
