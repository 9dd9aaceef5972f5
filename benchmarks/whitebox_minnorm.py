"""Minimum-norm and optimisation white-box attacks against the peers, side by side.

    python benchmarks/whitebox_minnorm.py [--sections deepfool cw cw-targeted cw-box cw-linf jsma
        lbfgs lbfgs-warm fab] [--models mnist-cnn mnist-mlp] [--n 100] [--n-targeted 20]
        [--n-jsma 100] [--cw-steps 100] [--peers foolbox art torchattacks]

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

Each section's table is written to benchmarks/results/whitebox_minnorm-<section>-<model>.json
(with the date, torch version, n and settings); the docstrings of the attacks point there.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import Counted, art_classifier, table
from common import have as installed
from torch import Tensor, nn

import advlab

Run = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


PEERS = ["foolbox", "art", "torchattacks"]
RESULTS = Path(__file__).parent / "results"


def have(peer: str) -> bool:
    """A peer library that is installed and selected with --peers."""
    return peer in PEERS and installed(peer)


class Meter(Counted):
    """Counted, plus the rows that go through backward passes."""

    def reset(self) -> None:
        super().reset()
        self.bw_rows = 0

    def _count_backward(self, grad: Tensor) -> None:
        super()._count_backward(grad)
        self.bw_rows += len(grad)


def correct_subset(model: nn.Module, n: int) -> tuple[Tensor, Tensor]:
    """The first n correctly classified images of the mnist5k test split."""
    x, y = advlab.data.load("mnist5k", split="test")
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


def measure(name: str, fn: Run, meter: Meter, x: Tensor, y: Tensor,
            target: Tensor | None = None) -> dict:
    """Run one attack once; time, evaluations, re-checked success, norms."""
    meter.reset()
    t0 = time.perf_counter()
    x_adv = fn(x, y, target).detach().float().clamp(0, 1)
    dt = time.perf_counter() - t0
    with torch.no_grad():
        pred = meter.model(x_adv).argmax(1)
    ok = pred != y if target is None else pred == target
    d = (x_adv - x).flatten(1)
    n = len(x)
    return {"lib": name, "time_s": dt, "fwd/img": meter.rows / n, "bwd/img": meter.bw_rows / n,
            "success": ok.float().mean().item(), "ok": ok, "l2": d.norm(dim=1),
            "linf": d.abs().amax(1), "l0": (d.abs() > 1e-7).sum(1).float(), "x_adv": x_adv}


def summarise(rows: list[dict], norm: str) -> list[dict]:
    """Median/mean norm over successes, and the median over the images every row fooled."""
    common = torch.stack([r["ok"] for r in rows]).all(0)
    out = []
    for r in rows:
        v = r[norm]
        s = dict(r)
        s[f"med_{norm}"] = v[r["ok"]].median().item() if r["ok"].any() else float("nan")
        s[f"mean_{norm}"] = v[r["ok"]].mean().item() if r["ok"].any() else float("nan")
        s[f"med_{norm}_common"] = v[common].median().item() if common.any() else float("nan")
        s["n_common"] = int(common.sum())
        out.append(s)
    return out


def advlab_run(attack: advlab.attacks.Attack, model: nn.Module) -> Run:
    return lambda x, y, t: attack(model, x, y, target=t).x_adv


def art_run(make: Callable, model: nn.Module, x: Tensor, targeted: bool = False) -> Run:
    clf = art_classifier(model, tuple(x.shape[1:]))
    atk = make(clf)

    def run(xx: Tensor, yy: Tensor, t: Tensor | None) -> Tensor:
        if t is None:
            return torch.from_numpy(atk.generate(xx.numpy()))
        onehot = np.eye(10, dtype=np.float32)[t.numpy()]
        return torch.from_numpy(atk.generate(xx.numpy(), y=onehot))
    return run


def foolbox_run(atk: object, model: nn.Module) -> Run:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))

    def run(xx: Tensor, yy: Tensor, t: Tensor | None) -> Tensor:
        crit = yy if t is None else fb.criteria.TargetedMisclassification(t)
        return atk(fmodel, xx, crit, epsilons=None)[1]
    return run


def torchattacks_run(atk: object) -> Run:
    def run(xx: Tensor, yy: Tensor, t: Tensor | None) -> Tensor:
        if t is None:
            return atk(xx, yy)
        atk.set_mode_targeted_by_label(quiet=True)
        return atk(xx, t)
    return run


# ------------------------------------------------------------------------------ sections


def deepfool_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
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


def cw_rows(model: Meter, x: Tensor, y: Tensor, steps: int) -> list[dict]:
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


def cw_targeted_rows(model: Meter, x: Tensor, y: Tensor, steps: int) -> list[dict]:
    xs, ys, ts = all_targets(x, y)
    r = measure("advlab", advlab_run(advlab.attacks.get("cw-l2", steps=steps), model),
                model, xs, ys, ts)
    l2 = torch.where(r["ok"], r["l2"], torch.inf).view(len(x), -1)
    r.update({"best": l2.amin(1).mean().item(), "average": l2.mean(1).mean().item(),
              "worst": l2.amax(1).mean().item()})
    return [r, {"lib": "C&W 2017 (paper)", "success": 1.0, "best": 1.36, "average": 1.76,
                "worst": 2.60}]


def cw_box_rows(model: Meter, x: Tensor, y: Tensor, steps: int) -> list[dict]:
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


def jsma_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
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


def lbfgs_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
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


def cw_linf_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
    """C&W Linf at its default (30 Adam steps per solve, c0 0.1) vs 100 steps from c0 0.01."""
    settings = {"steps 30, c0 0.1 (default)": {"steps": 30, "c0": 0.1},
                "steps 100, c0 0.01": {"steps": 100, "c0": 0.01}}
    return summarise([measure(k, advlab_run(advlab.attacks.get("cw-linf", **kw), model),
                              model, x, y) for k, kw in settings.items()], "linf")


def lbfgs_warm_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
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


def fab_rows(model: Meter, x: Tensor, y: Tensor) -> list[dict]:
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


COLUMNS = {
    "fab": ["lib", "time_s", "fwd/img", "bwd/img", "success", "med_linf", "mean_linf",
            "med_linf_common", "n_common"],
    "deepfool": ["lib", "time_s", "fwd/img", "bwd/img", "success", "med_l2", "mean_l2",
                 "med_l2_common", "n_common", "rho"],
    "cw": ["lib", "time_s", "fwd/img", "bwd/img", "success", "med_l2", "mean_l2",
           "med_l2_common", "n_common"],
    "cw-targeted": ["lib", "time_s", "fwd/img", "bwd/img", "success", "best", "average",
                    "worst"],
    "cw-box": ["lib", "time_s", "fwd/img", "bwd/img", "success", "med_l2", "mean_l2",
               "med_l2_common", "n_common"],
    "jsma": ["lib", "time_s", "fwd/img", "bwd/img", "success", "pixels_%", "med_l0", "mean_l0",
             "med_l0_common", "n_common"],
    "lbfgs": ["lib", "time_s", "fwd/img", "bwd/img", "success", "med_l2", "mean_l2",
              "ratio_to_deepfool"],
    "cw-linf": ["lib", "time_s", "fwd/img", "bwd/img", "success", "med_linf", "mean_linf",
                "med_linf_common", "n_common"],
    "lbfgs-warm": ["lib", "time_s", "fwd/img", "bwd/img", "success", "med_l2", "mean_l2",
                   "med_l2_common", "n_common"],
}


def save(section: str, model: str, rows: list[dict], settings: dict) -> Path:
    """The section's table as JSON in benchmarks/results (the columns of COLUMNS only)."""
    keep = [{c: r[c] for c in COLUMNS[section] if c in r} for r in rows]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"whitebox_minnorm-{section}-{model}.json"
    path.write_text(json.dumps({
        "section": section, "model": model,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(), **settings, "rows": keep}, indent=1) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", nargs="+", default=list(COLUMNS))
    ap.add_argument("--models", nargs="+", default=["mnist-cnn", "mnist-mlp"])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n-targeted", type=int, default=20)
    ap.add_argument("--n-jsma", type=int, default=100)
    ap.add_argument("--cw-steps", type=int, default=100)
    ap.add_argument("--peers", nargs="*", default=PEERS, help="peer libraries to run")
    args = ap.parse_args()
    PEERS[:] = args.peers
    torch.set_num_threads(1)
    for name in args.models:
        model = Meter(advlab.zoo.load(name)).eval()
        x, y = correct_subset(model.model, max(args.n, args.n_targeted, args.n_jsma))
        for sec in args.sections:
            if sec == "deepfool":
                rows = deepfool_rows(model, x[:args.n], y[:args.n])
            elif sec == "cw":
                rows = cw_rows(model, x[:args.n], y[:args.n], args.cw_steps)
            elif sec == "cw-targeted":
                rows = cw_targeted_rows(model, x[:args.n_targeted], y[:args.n_targeted],
                                        args.cw_steps)
            elif sec == "cw-box":
                rows = cw_box_rows(model, x[:args.n], y[:args.n], args.cw_steps)
            elif sec == "fab":
                rows = fab_rows(model, x[:args.n], y[:args.n])
            elif sec == "jsma":
                rows = jsma_rows(model, x[:args.n_jsma], y[:args.n_jsma])
            elif sec == "cw-linf":
                rows = cw_linf_rows(model, x[:args.n], y[:args.n])
            elif sec == "lbfgs-warm":
                rows = lbfgs_warm_rows(model, x[:args.n], y[:args.n])
            else:
                rows = lbfgs_rows(model, x[:args.n], y[:args.n])
            print(f"\n## {sec} on {name}\n")
            print(table(rows, COLUMNS[sec]), flush=True)
            n = {"jsma": args.n_jsma, "cw-targeted": args.n_targeted}.get(sec, args.n)
            settings = {"n": n, "peers": PEERS}
            if sec == "jsma":
                settings["targets"] = "all 9 per image"  # n x 9 attacks
            if sec.startswith("cw") and sec != "cw-linf":
                settings["cw_steps"] = args.cw_steps
            print(save(sec, name, rows, settings))


if __name__ == "__main__":
    main()
