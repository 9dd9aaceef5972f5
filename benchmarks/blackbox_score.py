"""Score-based black-box attacks on mnist-cnn (mnist5k test), with the peers side by side.

    python benchmarks/blackbox_score.py [--parts square,zoo,order] [--n 200] [--n-order 100]
                                        [--n-zoo 20] [--n-art-zoo 5] [--plot FILE.png]

Parts (each on the first correctly classified test images, one thread):

- ``square``: Square Linf eps=0.3 with 1,000 queries: advlab, torchattacks (its own per-example
  query counter) and ART (one image at a time through a row counter: every model row it
  evaluates is a query). Success rate and median queries of the successful examples.
- ``zoo``: ZOO untargeted (minimum-norm L2): success, mean L2 and time against C&W white-box
  (``cw-l2`` when registered, else a PGD-L2 bisection on eps, said so) on the same images;
  then on a subset, advlab's ZOO (main and fast settings) against ART's ZooAttack with its
  defaults and with settings equal to each (ART 1.20 clips its noise variable, not x + noise,
  to [0, 1], so it can only brighten pixels). ART's batch_size stays 1 (its default): with
  more images per batch and no resizing, ART 1.20 sizes its ADAM state for one image and
  fails (IndexError in _reset_adam).
- ``order``: query efficiency at Linf eps=0.3: Square, Bandits-TD, NES, ZOO through an oracle
  that records, per example, the first query that lands on an adversarial point inside the
  Linf ball. Median queries to success and the success-vs-queries curve (saved as PNG).
- ``spsa``: advlab SPSA vs torchattacks SPSA at Linf eps 0.2, delta 0.01, lr 0.01, 100 Adam
  steps of 64 Rademacher pairs (advlab's oracle counts 129 queries a step), on the model
  and on the model behind an 8-bit input quantisation that masks its gradient (PGD-40 given
  for reference); the table goes to results/blackbox_score-spsa-mnist-cnn.json.

advlab's counts are the Oracle's (every query, success checks included).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import (
    RESULTS,
    Counted,
    Run,
    advlab_run,
    correct_subset,
    have,
    measure,
    save,
    table,
    torchattacks_run,
)
from torch import Tensor, nn

import advlab
from advlab.attacks.blackbox import Oracle

torch.set_num_threads(1)

EPS = 0.3
SQUARE = {"max_queries": 1000, "p_init": 0.8}
# ZOO, the minimum-norm setting: 14 x 14 then 28 x 28 (hierarchical, importance sampling at
# the switch), two binary-search steps of 60 iterations from c = 1, coordinate ADAM;
# at most 2 x 60 x 257 = 30,840 queries per image.
ZOO_CFG = {"hierarchy": (14,), "resize_every": 30, "max_iter": 60, "binary_search_steps": 2,
           "initial_const": 1.0, "lr": 0.02, "coords": 128, "max_queries": 40_000}
# ZOO, the fast setting: 7 x 7 only, large c and lr, early abort; first success, large L2.
ZOO_FAST = {"hierarchy": (7,), "resize_every": 10_000, "max_iter": 20,
            "binary_search_steps": 1, "initial_const": 10.0, "lr": 0.1, "coords": 128,
            "max_queries": 40_000}
ORDER = {
    "square": ("square", {"max_queries": 1_000}),  # its p schedule spans the budget
    "bandits": ("bandits", {"max_queries": 10_000}),
    "nes": ("nes", {"max_queries": 10_000}),
    "zoo": ("zoo-attack", ZOO_CFG),
}


class FirstSuccess(Oracle):
    """An Oracle that also records, per example, the number of the first query that was
    adversarial and inside the Linf ball of radius ``eps`` (``first``; inf while none), and of
    the first adversarial query of any size (``first_any``)."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, eps: float,
                 max_queries: int | None) -> None:
        super().__init__(model, "scores", max_queries)
        self.x, self.y, self.eps = x, y, eps
        self.first = torch.full((len(x),), float("inf"))
        self.first_any = torch.full((len(x),), float("inf"))

    def __call__(self, q: Tensor, owner: Tensor | None = None) -> Tensor:
        owner = torch.arange(len(q)) if owner is None else owner
        before = self.counts.clone()
        out = super().__call__(q, owner)
        rank = _rank_within(owner)
        number = (before[owner] + rank + 1).float()
        inside = (q - self.x[owner]).flatten(1).abs().amax(1) <= self.eps + 1e-6
        adv = out.argmax(1) != self.y[owner]
        for record, hit in ((self.first, adv & inside), (self.first_any, adv)):
            if hit.any():
                record.scatter_reduce_(0, owner[hit], number[hit], reduce="amin")
        return out


def _rank_within(owner: Tensor) -> Tensor:
    """For each row, how many earlier rows of the same call belong to the same example."""
    order = torch.argsort(owner, stable=True)
    sorted_owner = owner[order]
    start = torch.ones_like(sorted_owner, dtype=torch.bool)
    start[1:] = sorted_owner[1:] != sorted_owner[:-1]
    pos = torch.arange(len(owner))
    group_start = torch.cummax(torch.where(start, pos, 0), 0).values
    rank = torch.empty_like(owner)
    rank[order] = pos - group_start
    return rank


def success_of(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def med(v: Tensor) -> float:
    v = v[torch.isfinite(v)]
    return float(v.median()) if len(v) else float("nan")


# ----------------------------------------------------------------------------- square


def square_part(model: nn.Module, x: Tensor, y: Tensor) -> list[dict]:
    rows = []
    t0 = time.perf_counter()
    res = advlab.attacks.get("square", eps=EPS, **SQUARE)(model, x, y)
    dt = time.perf_counter() - t0
    q = res.queries.float()
    rows.append({"attack": "advlab square", "success": res.success_rate,
                 "median q": med(q[res.success]), "mean q": float(q[res.success].mean()),
                 "time s": dt})
    if have("torchattacks"):
        rows.append(_torchattacks_square(model, x, y))
    if have("art"):
        rows.append(_art_square(model, x, y))
    return rows


def _torchattacks_square(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    import torchattacks as ta

    atk = ta.Square(model, norm="Linf", eps=EPS, n_queries=SQUARE["max_queries"],
                    p_init=SQUARE["p_init"], loss="margin", resc_schedule=True, seed=0)
    rng = torch.get_rng_state()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    atk.init_hyperparam(x)
    n_queries, x_adv = atk.attack_single_run(x, y)  # per-example counts, init query included
    dt = time.perf_counter() - t0
    torch.set_rng_state(rng)
    ok = success_of(model, x_adv, y)
    q = n_queries.float().cpu()
    return {"attack": "torchattacks Square", "success": ok.float().mean().item(),
            "median q": med(q[ok]), "mean q": float(q[ok].mean()), "time s": dt}


def _art_square(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    from art.attacks.evasion import SquareAttack
    from common import art_classifier

    counted = Counted(model).eval()
    clf = art_classifier(counted, tuple(x.shape[1:]))
    atk = SquareAttack(clf, norm=np.inf, eps=EPS, max_iter=SQUARE["max_queries"],
                       p_init=SQUARE["p_init"], nb_restarts=1, batch_size=1, verbose=False)
    queries, adv = [], []
    np.random.seed(0)
    t0 = time.perf_counter()
    for i in range(len(x)):  # one image at a time: the rows counted are its queries
        counted.reset()
        adv.append(torch.from_numpy(atk.generate(x[i:i + 1].numpy(), y[i:i + 1].numpy())))
        queries.append(counted.rows)
    dt = time.perf_counter() - t0
    ok = success_of(model, torch.cat(adv), y)
    q = torch.tensor(queries, dtype=torch.float)
    return {"attack": "ART SquareAttack", "success": ok.float().mean().item(),
            "median q": med(q[ok]), "mean q": float(q[ok].mean()), "time s": dt}


# ----------------------------------------------------------------------------- zoo


def minimum_norm_reference(model: nn.Module, x: Tensor,
                           y: Tensor) -> tuple[str, Tensor, Tensor, float]:
    """C&W L2 when registered, else the smallest PGD-L2 eps found by bisection."""
    t0 = time.perf_counter()
    if "cw-l2" in advlab.attacks.available():
        res = advlab.attacks.get("cw-l2")(model, x, y)
        return "cw-l2 (white-box)", res.success, res.norms["l2"], time.perf_counter() - t0
    lo, hi = torch.zeros(len(x)), torch.full((len(x),), 6.0)
    best = torch.full((len(x),), float("inf"))
    for _ in range(12):
        mid = (lo + hi) / 2
        res = advlab.attacks.get("pgd-l2", steps=100, restarts=1)(model, x, y, eps=mid)
        best = torch.where(res.success, torch.minimum(best, res.norms["l2"]), best)
        hi, lo = torch.where(res.success, mid, hi), torch.where(res.success, lo, mid)
    return ("pgd-l2 bisection (cw-l2 not registered)", torch.isfinite(best), best,
            time.perf_counter() - t0)


def zoo_part(model: nn.Module, x: Tensor, y: Tensor, n_art: int,
             zoo_res: advlab.attacks.AttackResult | None, zoo_time: float) -> list[dict]:
    rows = []
    if zoo_res is None:
        t0 = time.perf_counter()
        zoo_res = advlab.attacks.get("zoo-attack", **ZOO_CFG)(model, x, y)
        zoo_time = time.perf_counter() - t0
    ok = zoo_res.success
    rows.append({"attack": "advlab zoo-attack", "images": len(x),
                 "success": ok.float().mean().item(),
                 "mean L2": float(zoo_res.norms["l2"][ok].mean()),
                 "s / image": zoo_time / len(x),
                 "q / image": float(zoo_res.queries.float().mean())})
    name, ok_ref, l2_ref, dt = minimum_norm_reference(model, x, y)
    rows.append({"attack": name, "images": len(x), "success": ok_ref.float().mean().item(),
                 "mean L2": float(l2_ref[ok_ref].mean()), "s / image": dt / len(x)})
    both = ok & ok_ref
    rows.append({"attack": "ratio zoo / ref (both succeed)", "images": int(both.sum()),
                 "mean L2": float(zoo_res.norms["l2"][both].mean() / l2_ref[both].mean())})
    if have("art") and n_art > 0:
        rows += _zoo_vs_art(model, x[:n_art], y[:n_art])
    return rows


def _zoo_vs_art(model: nn.Module, x: Tensor, y: Tensor) -> list[dict]:
    """ART's ZooAttack with its defaults and with settings equal to advlab's two (at full
    resolution: ART cannot optimise at 14 x 14 or 7 x 7 on 28 x 28 images), against advlab's
    two, on the same images; every model row ART evaluates is counted as a query."""
    from art.attacks.evasion import ZooAttack
    from common import art_classifier

    rows = []
    times = {}
    for label, cfg in (("main", ZOO_CFG), ("fast", ZOO_FAST)):
        t0 = time.perf_counter()
        res = advlab.attacks.get("zoo-attack", **cfg)(model, x, y)
        times[label] = (time.perf_counter() - t0) / len(x)
        ok = res.success
        rows.append({"attack": f"advlab zoo-attack, {label} settings", "images": len(x),
                     "success": res.success_rate,
                     "mean L2": float(res.norms["l2"][ok].mean()) if ok.any() else float("nan"),
                     "q / image": float(res.queries.float().mean()),
                     "s / image": times[label]})
    counted = Counted(model).eval()
    clf = art_classifier(counted, tuple(x.shape[1:]))

    def equal(cfg: dict) -> dict:
        return dict(learning_rate=cfg["lr"], max_iter=cfg["max_iter"],
                    binary_search_steps=cfg["binary_search_steps"],
                    initial_const=cfg["initial_const"], nb_parallel=cfg["coords"],
                    use_resize=False, use_importance=False)

    settings = {"ART defaults": {}, "main settings": equal(ZOO_CFG),
                "fast settings": equal(ZOO_FAST)}
    for label, kw in settings.items():
        np.random.seed(0)
        counted.reset()
        atk = ZooAttack(clf, verbose=False, batch_size=1, **kw)
        t0 = time.perf_counter()
        adv = torch.from_numpy(atk.generate(x.numpy(), y.numpy()))
        dt = (time.perf_counter() - t0) / len(x)
        ok = success_of(model, adv, y)
        l2 = (adv - x).flatten(1).norm(dim=1)
        rows.append({"attack": f"ART ZooAttack, {label}", "images": len(x),
                     "success": ok.float().mean().item(),
                     "mean L2": float(l2[ok].mean()) if ok.any() else float("nan"),
                     "q / image": counted.rows / len(x), "s / image": dt,
                     "ART s / advlab fast s": dt / times["fast"]})
    return rows


# ----------------------------------------------------------------------------- order


def order_part(model: nn.Module, x: Tensor, y: Tensor, n_zoo: int
               ) -> tuple[list[dict], dict[str, Tensor], tuple]:
    curves, rows, zoo_out = {}, [], (None, 0.0)
    for label, (name, kw) in ORDER.items():
        xs, ys = (x[:n_zoo], y[:n_zoo]) if name == "zoo-attack" else (x, y)
        oracle = FirstSuccess(model, xs, ys, EPS, kw.get("max_queries"))
        atk = advlab.attacks.get(name, **kw) if name == "zoo-attack" else \
            advlab.attacks.get(name, eps=EPS, **kw)
        t0 = time.perf_counter()
        res = atk(oracle, xs, ys)
        dt = time.perf_counter() - t0
        first = oracle.first
        curves[label] = first
        ok = torch.isfinite(first)
        rows.append({"attack": label, "images": len(xs), "success": ok.float().mean().item(),
                     "median q (successes)": med(first),
                     "q at 50% success": float(first.sort().values[(len(first) - 1) // 2]),
                     "mean q (successes)": float(first[ok].mean()) if ok.any() else float("nan"),
                     "success, any size": torch.isfinite(oracle.first_any).float().mean().item(),
                     "median q, any size": med(oracle.first_any), "time s": dt})
        if name == "zoo-attack":
            zoo_out = (res, dt)
            curves[f"{label}, adversarial of any size"] = oracle.first_any
    return rows, curves, zoo_out


def plot(curves: dict[str, Tensor], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.unique(np.logspace(0, 5, 200).astype(int))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, first in curves.items():
        f = first.numpy()
        ax.plot(grid, [(f <= q).mean() for q in grid], label=f"{label} (n={len(f)})",
                linestyle="--" if "any size" in label else "-")
    ax.set_xscale("log")
    ax.set_xlabel("queries per example")
    ax.set_ylabel("success rate")
    ax.set_title(f"mnist-cnn, Linf eps={EPS}: success vs queries")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------- spsa

SPSA_COLUMNS = ["lib", "model", "success", "time_s", "fwd/img"]


class Quantized(nn.Module):
    """The model on 8-bit inputs: round() has zero gradient, so autograd sees nothing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * 255) / 255)


def spsa_part(model: nn.Module, x: Tensor, y: Tensor) -> list[dict]:
    out = []
    for label, target in (("plain", model), ("8-bit", Quantized(model))):
        counted = Counted(target).eval()
        runs: dict[str, Run] = {
            "advlab PGD-40": advlab_run(advlab.attacks.PGD(eps=0.2, steps=40), counted),
            "advlab SPSA": advlab_run(advlab.attacks.get(
                "spsa", eps=0.2, steps=100, n_samples=64, delta=0.01, lr=0.01), counted),
        }
        if have("torchattacks"):
            import torchattacks as ta

            runs["torchattacks SPSA"] = torchattacks_run(ta.SPSA(
                counted, eps=0.2, delta=0.01, lr=0.01, nb_iter=100, nb_sample=64,
                max_batch_size=64))
        for k, f in runs.items():
            r = measure(k, f, counted, x, y)
            r["model"] = label
            out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="square,zoo,order,spsa")
    ap.add_argument("--n", type=int, default=200, help="images for the Square comparison")
    ap.add_argument("--n-order", type=int, default=100, help="images for the ordering")
    ap.add_argument("--n-zoo", type=int, default=20, help="images for ZOO")
    ap.add_argument("--n-art-zoo", type=int, default=5, help="images for ART's ZOO")
    ap.add_argument("--n-spsa", type=int, default=20, help="images for SPSA")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="folder for the JSON tables (another one for trial runs)")
    ap.add_argument("--plot", default="benchmarks/blackbox_success_vs_queries.png")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    model = advlab.zoo.load("mnist-cnn")
    say: Callable[[str], None] = lambda s: print(s, flush=True)  # noqa: E731
    if "square" in parts:
        x, y = correct_subset(model, args.n)
        say(f"\n== Square Linf eps={EPS}, {SQUARE['max_queries']} queries, {len(x)} images ==")
        say(table(square_part(model, x, y), ["attack", "success", "median q", "mean q",
                                            "time s"]))
    zoo_out: tuple = (None, 0.0)
    if "order" in parts:
        x, y = correct_subset(model, args.n_order)
        say(f"\n== Query efficiency, Linf eps={EPS} (first adversarial query inside the ball) ==")
        rows, curves, zoo_out = order_part(model, x, y, args.n_zoo)
        say(table(rows, ["attack", "images", "success", "median q (successes)",
                         "q at 50% success", "mean q (successes)", "success, any size",
                         "median q, any size", "time s"]))
        plot(curves, args.plot)
        say(f"plot: {args.plot}")
    if "zoo" in parts:
        x, y = correct_subset(model, args.n_zoo)
        say(f"\n== ZOO untargeted (min-norm L2), {ZOO_CFG} ==")
        say(table(zoo_part(model, x, y, args.n_art_zoo, *zoo_out),
                  ["attack", "images", "success", "mean L2", "q / image", "s / image",
                   "ART s / advlab fast s"]))
    if "spsa" in parts:
        x, y = correct_subset(model, args.n_spsa)
        rows = spsa_part(model, x, y)
        say(f"\n== SPSA Linf eps=0.2, 100 steps x 64 pairs, {len(x)} images ==")
        say(table(rows, SPSA_COLUMNS))
        say(str(save(args.results / "blackbox_score-spsa-mnist-cnn.json", rows, SPSA_COLUMNS,
                     section="spsa", model="mnist-cnn", n=len(x),
                     images="first correctly classified of mnist5k test")))


if __name__ == "__main__":
    main()
