"""advlab's ``autoattack`` against the reference AutoAttack (the authors' code, version
"standard"), in one process, interleaved, on the same model, images and eps; and the stronger
ensemble ``autoattack-mt`` against ``autoattack`` on the same images.

    ADVLAB_AUTOATTACK_REF=/tmp/ref python benchmarks/autoattack_vs_reference.py \\
        [--ref PATH] [--models mnist-cnn:0.1 mnist-cnn-trades:0.3] [--n 200] [--rounds 1] \\
        [--sections reference stronger blocks]

The reference is not a dependency: point ``--ref`` (or ``ADVLAB_AUTOATTACK_REF``) at a
directory holding its ``autoattack`` package (github.com/fra31/auto-attack, checked out
anywhere); the ``reference`` section is skipped without it. ``mnist-cnn-trades`` comes from
:func:`advlab.defenses.load_robust` (trained once on first use, then cached).

Sections (robust accuracy counts an example robust only if it is classified correctly both
clean and on the returned image, re-checked here, and the returned image is inside the
eps-ball; seconds are wall time, per member as well):

- reference: the reference AutoAttack and advlab's ``autoattack`` alternate (the order
  swaps every round), each on the same images; the run of each with the least CPU time
  over the rounds, and the ratio reference / advlab.
- stronger: ``autoattack`` and ``autoattack-mt`` on the same images: robust accuracy,
  time and the cost ratio.
- blocks: the model's cost per row of a forward and of a forward+backward w.r.t. the input,
  at 8 to 512 rows per call (fastest of --rounds + 2 interleaved rounds, at least 512 rows
  per contender and round): the block size of ``advlab.attacks.base.RowBlocks``. Written to
  results/autoattack_vs_reference-blocks-<model>.json.

"fwd rows" / "bwd": images forwarded and backward passes (calls), counted on the model.

``--budget B`` scales both ensembles' iterations and queries by B (APGD and FAB 100 B
iterations, Square 5,000 B queries): the same passes per iteration at the same batch shapes,
for a run that fits a loaded machine. "cpu s" is the process's CPU time (one thread), which
a loaded machine disturbs far less than wall time. Results go to ``results/`` as JSON (with
the indices of the images left robust).

Where the time goes (mnist-cnn and mnist-cnn-trades, one thread, nearly idle machine, per
row; the two models agree within 10%)::

    rows per call          8     16     32     64    128    256    512
    forward (us)         113    110     93     84    165    193    196
    forward+backward     371    313    291    282    287    396    424
    FAB projection        33     30     28     28     28     28     31   (x2 per FAB step)

On robust points both implementations make the same passes: APGD-CE 100 and APGD-T 9 x 100
forward+backward, FAB-T 9 x 100 x (forward+backward, a check forward, two projections),
Square 5,000 forwards; with blocks of 64 rows (``advlab.attacks.base.RowBlocks``) advlab
pays the cheapest per-row price, where the reference forwards its whole batch (all robust
points of a 250-image batch, ~155 rows at n = 200). The arithmetic of the table predicts
about 1.5x at n = 200 and nothing at n <= 60 (batches already small). Reusing FAB's check
forward as the next gradient forward does not pay: 68% of FAB-T's iterates on mnist-cnn
robust points are adversarial (outside eps) and step back, which would cost an extra
forward+backward. Measured, reference a392200 (fra31/auto-attack), torch 2.13::

    --models mnist-cnn:0.1 --n 200 --budget 0.2   (load average 13-15)
    impl       robust_acc  seconds  cpu s  fwd rows  bwd calls
    reference  0.77        597.3    61.3   251384    390
    advlab     0.77        416.0    59.1   243301    967
    members (s): reference apgd-ce 11.7, apgd-t 95.6, fab-t 247.3, square 240.0
                 advlab    apgd-ce 12.2, apgd-t 75.9, fab-t 140.7, square 186.8
    time ratio reference / advlab: wall 1.44, cpu 1.04

    --models mnist-cnn-trades:0.3 --n 200 --budget 0.2   (the same run, second process)
    reference  0.785       690.0    76.0   256234    390
    advlab     0.785       365.8    58.0   248316    1008
    members (s): reference apgd-ce 9.7, apgd-t 91.2, fab-t 252.2, square 333.9
                 advlab    apgd-ce 8.9, apgd-t 97.0, fab-t 150.3, square 109.3
    time ratio reference / advlab: wall 1.89, cpu 1.31

Both leave the same images robust (identical index sets).

    --n 200 --budget 0.1 --rounds 2   (load average 14-17; the run with the best wall time)
    model             impl       robust_acc  seconds  cpu s  (cpu s of the other round)
    mnist-cnn         reference  0.775       132.9    29.8   (37.5)
    mnist-cnn         advlab     0.78        89.1     29.0   (31.1)
    mnist-cnn-trades  reference  0.79        131.5    30.5   (30.7)
    mnist-cnn-trades  advlab     0.79        97.5     29.1   (31.1)
    time ratio reference / advlab: mnist-cnn wall 1.49, cpu 1.03; trades wall 1.35, cpu 1.05

    the same again (--out ...-run2.json), load average 8-10:
    mnist-cnn         reference 0.775 / advlab 0.78: wall 1.02, cpu 1.03
    mnist-cnn-trades  reference 0.79  / advlab 0.79: wall 1.09, cpu 1.04
    members (s), mnist-cnn: reference apgd-ce 2.0, apgd-t 17.9, fab-t 22.1, square 31.7
                            advlab    apgd-ce 3.3, apgd-t 24.9, fab-t 18.8, square 26.2

At a tenth of the budget the random starts decide single images: on mnist-cnn advlab left
one image more robust (image 107), on trades each left one the other fooled (30, 112).
A cProfile of that mnist-cnn run (CPU clock) puts advlab at 33.1 s against 43.2 s (1.31):
conv2d 9.5 against 15.7 s, backward 5.7 against 7.9 s, relu 2.4 against 5.4 s; autograd's
max-pooling (3.7 s each) and the no-grad pooling's maximum (3.3 against 4.3 s) gain little.

At that point (33a362c) the 1.5x target was not met: CPU-time ratios 1.03-1.31 (CPU time
swings by 20% between rounds at load 15). APGD-T was slower than the reference's (its
targets ran side by side, so an example that falls to its first target paid for all nine
rows until it fell), Square's redraw of windows that would not change the image cost about
a quarter of its model time, and the zoo conv nets ran in the contiguous layout.

Since then: APGD-T runs its targets one after another on the examples still robust (as
the reference does); Square redraws only the windows that need it (outputs bitwise
unchanged); and ``RowBlocks`` hands a conv net that takes it its blocks in the channels-last
layout (oneDNN; about a fifth less per row, forward and forward+backward alike: the logits
agree to ~1e-6, not bitwise). Before and after, each in one process, reference a392200,
torch 2.13, one thread, n = 200, budget 0.1, two interleaved rounds, the least-CPU round of
each (load 3-8)::

    model, eps            robust (ref / advlab)   cpu s (ref / advlab)   cpu ratio
    before (33a362c)
    mnist-cnn, 0.1        0.775 / 0.78            25.6 / 24.2            1.06
    mnist-cnn-trades, 0.3 0.79  / 0.79            26.2 / 27.2            0.96
    after
    mnist-cnn, 0.1        0.775 / 0.78            22.6 / 16.6            1.36
    mnist-cnn-trades, 0.3 0.79  / 0.795           23.8 / 17.2            1.38
    members (s), mnist-cnn:  reference apgd-ce 0.8, apgd-t 5.6, fab-t 8.6, square 7.7
                             advlab    apgd-ce 0.5, apgd-t 4.0, fab-t 5.6, square 6.7

At a fifth of the budget (after; results/...-budget0.2.json, the trades row of the
combined file ran at load 3, the trades-only file at load 1-2, two rounds)::

    mnist-cnn, 0.1        0.77  / 0.77 (same images)   45.1 / 30.6    1.47
    mnist-cnn-trades, 0.3 0.785 / 0.785 (same images)  41.8 / 32.4    1.29 (1.29 both rounds)
    members (s), trades:  reference apgd-ce 1.3, apgd-t 9.2, fab-t 16.4, square 14.8
                          advlab    apgd-ce 0.8, apgd-t 7.1, fab-t 11.4, square 13.0

(the same run before, at load 13-15: 1.04 and 1.31; CPU time under contention favours
whichever implementation suffers less from a shared cache, so compare within a run).

Per robust image and iteration (about 157 images after APGD-CE; mnist-cnn at budget 0.1,
the row above): APGD-T 283 us against the reference's 396, FAB-T 396 against 609, Square 85
against 98 per query. Square is what keeps the whole under 1.5x: 5,000 forwards per robust
point, where blocks and layout buy least (a forward of 64 channels-last rows ~80 us per row
against ~100-120 us in the reference's batch of ~157), and its own work per query (~3 us)
was already the reference's. The robust sets: mnist-cnn identical to before (advlab
leaves image 107, which the reference fools); trades: advlab leaves 59 and 112, the
reference 30. At a tenth of the budget the random starts decide such single images: run
alone, autoattack fools 30, 59 and 112 at budget 0.2 and 1.0, and 107 at 0.1, 0.2 and 1.0.

Earlier (before RowBlocks, mnist-cnn, 30 images, two interleaved rounds): robust 0.80 and
0.80, time ratio 1.01, forward rows equal within 1%.

The stronger ensemble on mnist-cnn-trades, eps 0.3, first 100 images: APGD-CE + APGD-T
leave 82 robust; on those 82 FAB-T, Square (5,000 queries), an APGD-T restart with and
without ODI, APGD-CE with 5 ODI restarts fool none, nor do 13 further rounds (APGD-T with
the DLR, CE and margin losses from ODI starts, APGD-CE with 9 restarts) on the 10 closest
(margins 0.008-0.46) or 100-200 small sign steps from the worst-case point. AutoAttack's
robust accuracy there is APGD's, and ``autoattack-mt`` (APGD-CE, APGD-T, 2.5 APGD-T runs
per robust point) matches it: 76.7% against 76.7% on 150 images at 0.64x its cost
(previous session); it is not stronger.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from common import Counted
from common import race as fastest
from torch import Tensor, nn

import advlab

REF_MEMBERS = (("apgd", "apgd-ce"), ("apgd_targeted", "apgd-t"), ("fab", "fab-t"),
               ("square", "square"))


def load_model(name: str) -> nn.Module:
    """A zoo model, or a robust model of :func:`advlab.defenses.load_robust`."""
    if name in advlab.zoo.available():
        return advlab.zoo.load(name).eval()
    t0 = time.perf_counter()
    model = advlab.defenses.load_robust(name)
    print(f"# {name}: loaded or trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return model.eval()


def robust_accuracy(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, eps: float) -> float:
    """Fraction classified correctly on x and on x_adv, with x_adv in the Linf ball and box."""
    inside = (x_adv - x).flatten(1).abs().amax(1) <= eps + 1e-6
    if not inside.all() or x_adv.min() < 0 or x_adv.max() > 1:
        raise AssertionError("an adversarial image left the eps-ball or the box")
    with torch.no_grad():
        ok = (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)
    return ok.float().mean().item()


def run_reference(ref: Any, model: Counted, x: Tensor, y: Tensor, eps: float,
                  bs: int = 250, budget: float = 1.0) -> dict[str, Any]:
    """The reference AutoAttack (standard version, seed 0, batch size ``bs``) with its members
    timed."""
    aa = ref.AutoAttack(model, norm="Linf", eps=eps, version="standard", device="cpu", seed=0,
                        verbose=False)
    if budget != 1.0:
        scale_reference(aa, budget)
    seconds: dict[str, float] = {}
    for attr, name in REF_MEMBERS:
        _time_member(getattr(aa, attr), name, seconds)
    model.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    x_adv = aa.run_standard_evaluation(x, y, bs=bs)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"x_adv": x_adv, "seconds": total, "cpu": cpu, "members": seconds,
            "fwd": model.rows, "bwd": model.backwards}


def scale_reference(aa: Any, budget: float) -> None:
    """The reference's members with ``budget`` times their iterations and queries (its APGD
    derives its checkpoint lengths from n_iter in __init__: recomputed the same way)."""
    for apgd in (aa.apgd, aa.apgd_targeted):
        n = max(1, round(100 * budget))
        apgd.n_iter = apgd.n_iter_orig = n
        apgd.n_iter_2, apgd.n_iter_min = max(int(0.22 * n), 1), max(int(0.06 * n), 1)
        apgd.size_decr = max(int(0.03 * n), 1)
    aa.fab.n_iter = max(1, round(100 * budget))
    aa.square.n_queries = max(1, round(5000 * budget))


def scaled_members(budget: float) -> dict[str, dict[str, int]]:
    """advlab's member settings at ``budget`` times the published iterations and queries."""
    steps = max(1, round(100 * budget))
    return {"apgd-ce": {"steps": steps}, "apgd-t": {"steps": steps}, "fab-t": {"steps": steps},
            "square": {"max_queries": max(1, round(5000 * budget))}}


def _time_member(obj: Any, name: str, seconds: dict[str, float]) -> None:
    inner = obj.perturb

    def perturb(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
        return out

    obj.perturb = perturb


def run_advlab(name: str, model: Counted, x: Tensor, y: Tensor, eps: float,
               budget: float = 1.0) -> dict[str, Any]:
    """A registered advlab ensemble (seed 0); ``budget`` scales autoattack's members."""
    kwargs = {} if budget == 1.0 else {"member_kwargs": scaled_members(budget)}
    attack = advlab.attacks.get(name, eps=eps, **kwargs)
    model.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    res = attack(model, x, y)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"x_adv": res.x_adv, "seconds": total, "cpu": cpu,
            "members": res.info.get("seconds", {}), "fwd": model.rows, "bwd": model.backwards}


def race(fns: dict[str, Callable[[], dict[str, Any]]], rounds: int) -> dict[str, dict]:
    """Each contender once per round, the order reversed every other round; per contender
    the run with the least CPU time (one thread: the clock a loaded machine disturbs least)."""
    best: dict[str, dict] = {}
    for r in range(rounds):
        for key in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            out = fns[key]()
            print(f"#   round {r} {key}: {out['seconds']:.1f} s, cpu {out['cpu']:.1f} s",
                  flush=True)
            if key not in best or out["cpu"] < best[key]["cpu"]:
                best[key] = out
    return best


def table(rows: list[tuple], header: tuple) -> None:
    print("  ".join(f"{h:<12}" for h in header))
    for row in rows:
        print("  ".join(f"{v:<12.4g}" if isinstance(v, float) else f"{v!s:<12}" for v in row))


def members_line(out: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in out["members"].items())


def show(best: dict, model, name: str, x, y, eps: float, what: str) -> list[dict[str, Any]]:
    """The table of one race (robust accuracy re-checked, time, passes) and each contender's
    time per member; returns the rows as records (with the indices of the robust images)."""
    rows = [(name, eps, k, robust_accuracy(model, x, o["x_adv"], y, eps),
             o["seconds"], o["cpu"], o["fwd"], o["bwd"]) for k, o in best.items()]
    table(rows, ("model", "eps", what, "robust_acc", "seconds", "cpu s", "fwd rows", "bwd"))
    for k, o in best.items():
        print(f"#   {k} members (s): {members_line(o)}")
    return [{"model": name, "eps": eps, "n": len(x), what: k, "robust_accuracy": acc,
             "seconds": sec, "cpu_seconds": cpu, "fwd_rows": fwd, "bwd": bwd,
             "members": best[k]["members"],
             "robust": robust_indices(model, x, best[k]["x_adv"], y)}
            for name, eps, k, acc, sec, cpu, fwd, bwd in rows]


def robust_indices(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> list[int]:
    """The images classified correctly both clean and on x_adv."""
    with torch.no_grad():
        ok = (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)
    return ok.nonzero().squeeze(1).tolist()


def save(records: list[dict[str, Any]], path: str) -> None:
    """Write the records (JSON) after each race, so an interrupted run keeps what it has."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(records, f, indent=1)


def block_costs(model: nn.Module, x: Tensor, y: Tensor, rounds: int) -> dict[str, Any]:
    """Microseconds per row of a forward and of a forward+backward at 8 ... 512 rows/call."""
    sizes = [8, 16, 32, 64, 128, 256, 512]

    def forward(k: int) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for i in range(0, 512, k):
                    model(x[i:i + k])
        return run

    def backward(k: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(0, 512, k):
                xa = x[i:i + k].detach().requires_grad_(True)
                loss = nn.functional.cross_entropy(model(xa), y[i:i + k])
                torch.autograd.grad(loss, xa)
        return run

    fns = {f"forward {k}": forward(k) for k in sizes}
    fns.update({f"forward+backward {k}": backward(k) for k in sizes})
    best, _ = fastest(fns, rounds + 2)
    return {kind: {k: 1e6 * best[f"{kind} {k}"] / 512 for k in sizes}
            for kind in ("forward", "forward+backward")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default=os.environ.get("ADVLAB_AUTOATTACK_REF"),
                   help="directory holding the reference 'autoattack' package")
    p.add_argument("--models", nargs="+", default=["mnist-cnn:0.1", "mnist-cnn-trades:0.3"])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--sections", nargs="+", default=["reference", "stronger"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ref-bs", type=int, default=250,
                   help="the reference's batch size (its default: 250)")
    p.add_argument("--budget", type=float, default=1.0,
                   help="the reference section's iterations and queries as a fraction of the "
                   "published ones (1: 100 iterations, 5,000 queries); same passes per "
                   "iteration, so a cheaper run at the same batch shapes")
    p.add_argument("--out", default=None, help="JSON file of the results; default "
                   "results/autoattack_vs_reference-<models>-n<n>.json beside this script")
    args = p.parse_args()
    tag = "_".join(m.replace(":", "-") for m in args.models)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"autoattack_vs_reference-{tag}-n{args.n}"
                                   f"{'' if args.budget == 1 else f'-budget{args.budget:g}'}.json")
    records: list[dict[str, Any]] = []
    torch.set_num_threads(args.threads)
    ref = None
    if "reference" in args.sections:
        if args.ref is None:
            print("# reference: no --ref / ADVLAB_AUTOATTACK_REF given; section skipped")
        else:
            sys.path.insert(0, args.ref)
            ref = importlib.import_module("autoattack")
    x_all, y_all = advlab.data.load("mnist5k", "test")
    x, y = x_all[:args.n], y_all[:args.n]
    if "blocks" in args.sections:
        for spec in args.models:
            name = spec.split(":")[0]
            us = block_costs(load_model(name), x_all[:512], y_all[:512], args.rounds)
            print(f"# {name}, microseconds per row by rows per call: {us}", flush=True)
            path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                f"autoattack_vs_reference-blocks-{name}.json")
            save([{"section": "blocks", "model": name, "torch": torch.__version__,
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "threads": args.threads, "loadavg": os.getloadavg(), "rows": 512,
                   "rounds": args.rounds + 2, "us_per_row": us}], path)
            print(f"# results: {path}")
    for spec in args.models if {"reference", "stronger"} & set(args.sections) else []:
        name, eps_s = spec.split(":")
        eps = float(eps_s)
        model = load_model(name)
        counted = Counted(model).eval()
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).float().mean().item()
        print(f"# {name} eps {eps}: n {args.n}, clean accuracy {clean:.3f}", flush=True)
        if ref is not None:
            best = race({"reference": lambda: run_reference(ref, counted, x, y, eps,
                                                            args.ref_bs, args.budget),
                         "advlab": lambda: run_advlab("autoattack", counted, x, y, eps,
                                                      args.budget)},
                        args.rounds)
            records += show(best, model, name, x, y, eps, "impl")
            for rec in records[-2:]:
                rec.update(ref_bs=args.ref_bs, budget=args.budget, rounds=args.rounds,
                           loadavg=os.getloadavg(), torch=torch.__version__)
            ratio = best["reference"]["seconds"] / best["advlab"]["seconds"]
            cpu = best["reference"]["cpu"] / best["advlab"]["cpu"]
            print(f"# time ratio reference / advlab: wall {ratio:.2f}, cpu {cpu:.2f}",
                  flush=True)
            save(records, out)
        if "stronger" in args.sections:
            best = race({"autoattack": lambda: run_advlab("autoattack", counted, x, y, eps),
                         "autoattack-mt": lambda: run_advlab("autoattack-mt", counted, x, y,
                                                             eps)}, args.rounds)
            records += show(best, model, name, x, y, eps, "attack")
            cost = best["autoattack-mt"]["seconds"] / best["autoattack"]["seconds"]
            cpu = best["autoattack-mt"]["cpu"] / best["autoattack"]["cpu"]
            print(f"# cost autoattack-mt / autoattack: wall {cost:.2f}, cpu {cpu:.2f}",
                  flush=True)
            save(records, out)
    if records:
        print(f"# results: {out}")


if __name__ == "__main__":
    main()
