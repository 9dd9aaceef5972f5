"""advlab's ``autoattack`` against the reference AutoAttack (the authors' code, version
"standard"), in one process, interleaved, on the same model, images and eps; and the stronger
ensemble ``autoattack-mt`` against ``autoattack`` on the same images.

    ADVLAB_AUTOATTACK_REF=/tmp/ref python benchmarks/autoattack_vs_reference.py \\
        [--ref PATH] [--models mnist-cnn:0.1 mnist-cnn-trades:0.3] [--n 200] [--rounds 1] \\
        [--sections reference stronger blocks square-seeds]

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
- square-seeds: Square alone (5,000 queries, from the clean image) on each of --images,
  from --seeds seeds, in advlab and in the reference: how often each fools the image (the
  boundary images that decide the robust sets apart). Written to
  results/autoattack_vs_reference-square-seeds-<model>.json.

"fwd rows" / "bwd": images forwarded and backward passes (calls), counted on the model;
"in model s": the time spent inside the model, its forwards and its backwards w.r.t. the
input (``common.Counted``); the rest of a contender's time is its own work.
"cpu s" is user + system time; the records keep both and the minor page faults. The
reference's fresh full-batch tensors are page-faulted in by the kernel, by an amount that
varies from run to run: in one trades run its Square took 164 s (68.5 s in the run before)
while the process spent 106 s in the kernel over 75 million minor faults. The user time is
the steadier comparison.

``--budget B`` scales both ensembles' iterations and queries by B (APGD and FAB 100 B
iterations, Square 5,000 B queries): the same passes per iteration at the same batch shapes,
for a run that fits a loaded machine. "cpu s" is the process's CPU time (one thread), which
a loaded machine disturbs far less than wall time. The reference section's records go to
results/autoattack_vs_reference-<models>-n<n>[-budget<B>].json (``--out`` for another file),
the stronger section's to results/autoattack_vs_reference-stronger-<models>-n<n>.json, each
with the indices of the images left robust.

On robust points both implementations make the same passes: APGD-CE 100 and APGD-T 9 x 100
forward+backward, FAB-T 9 x 100 x (forward+backward, a check forward, two projections),
Square 5,000 forwards. The reference forwards its whole batch (all robust points of a
250-image batch); advlab hands the model blocks of 64 rows (``RowBlocks``), where a small
conv net costs least per row on CPU (the blocks section), in the channels-last layout where
the model takes it. Blocks gain nothing where the batches are already small (a few dozen
images), and Square gains least: its 5,000 forwards per robust point are plain forwards,
where blocks and layout buy least. A gradient is taken block by block, each block's backward
right after its forward (``logits_and_grad``: about 10% less per row than one backward over
the activations of 16 blocks). FAB's projection finds its saturation point by Newton's
method instead of sorting the breakpoints (about a third of the time on FAB-T's 1,377 x 784
rows), and Square's proposal gathers, redraws and scatters only the window's pixels
(outputs bitwise unchanged). Reusing FAB's check forward as the next gradient forward does
not pay: 72% (mnist-cnn-trades) and 69% (mnist-cnn) of FAB-T's iterates on the robust points
are adversarial (outside eps) and step back, which would cost an extra forward+backward.
APGD-T runs its targets one after another on the examples still robust, as the reference
does. Timed on the model (mnist-cnn-trades, eps 0.3), the reference spends 221 of its 249 s
inside it and advlab 137 of its 156 s, for the same passes: advlab's lead is mostly in how it
feeds the model; outside it, 28 s against 19 s.

The reference section at n = 200, reference a392200 (fra31/auto-attack), torch 2.13: full
budget with the current code in results/autoattack_vs_reference-mnist-cnn-0.1_mnist-cnn-
trades-0.3-n200.json, and for trades again, with user and system time apart, in
-mnist-cnn-trades-0.3-n200.json and (two rounds, the order swapped) -rounds2.json; with the
time inside the model in -mnist-cnn-trades-0.3-n200-in-model-1.json, -in-model-2.json (two
rounds) and -mnist-cnn-0.1-n200-in-model.json. On trades the reference's time is bimodal:
203-249 s in 4 of 8 runs, 329-349 s in the other 4, with about 100 s in the kernel over
70-78 million minor page faults (advlab: 143-163 s, under 0.2 million faults, in all 8).
A fraction of the budget, with the code of 5046e46 (before the block-by-block gradients,
Newton's projection and the window-only Square proposals), in the first name's
-budget0.1.json and -budget0.2.json and in -mnist-cnn-trades-0.3-n200-budget0.2.json (two
rounds at a lower load). The files ending
in -before-33a362c record older code (APGD-T's targets side by side, Square redrawing every
window, contiguous blocks). CPU time under contention favours whichever implementation
suffers less from a shared cache, so compare within a file. The random starts decide
single images near the boundary: the two robust sets may differ by an image or two (e.g.
trades image 157, which the reference's Square fools in the races; Square alone, 5,000
queries, fools it from 4 of 10 seeds in advlab and 2 of 10 in the reference).

The stronger section writes results/autoattack_vs_reference-stronger-<models>-n<n>.json.
An earlier session's search for what AutoAttack leaves (no file holds it; mnist-cnn-trades,
eps 0.3, first 100 images): APGD-CE + APGD-T leave 82 robust; on those 82 FAB-T, Square
(5,000 queries), an APGD-T restart with and without ODI, APGD-CE with 5 ODI restarts fool
none, nor do 13 further rounds (APGD-T with the DLR, CE and margin losses from ODI starts,
APGD-CE with 9 restarts) on the 10 closest (margins 0.008-0.46) or 100-200 small sign steps
from the worst-case point.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
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
    start = clock()
    x_adv = aa.run_standard_evaluation(x, y, bs=bs)
    return {"x_adv": x_adv, **since(start), "members": seconds, **passes(model)}


def passes(model: Counted) -> dict[str, Any]:
    """What the model did since its reset: rows forwarded, backward passes, seconds in it."""
    return {"fwd": model.rows, "bwd": model.backwards, "model": model.seconds}


def clock() -> tuple[float, float, float, int]:
    """This process's wall clock, user and system CPU time, and minor page faults so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), ru.ru_utime, ru.ru_stime, ru.ru_minflt


def since(start: tuple[float, float, float, int]) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system), each part, and minor page faults since
    ``start`` (a :func:`clock` reading)."""
    wall, user, system, faults = (b - a for a, b in zip(start, clock()))
    return {"seconds": wall, "cpu": user + system, "user": user, "sys": system,
            "faults": faults}


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
    start = clock()
    res = attack(model, x, y)
    return {"x_adv": res.x_adv, **since(start),
            "members": res.info.get("seconds", {}), **passes(model)}


def race(fns: dict[str, Callable[[], dict[str, Any]]], rounds: int) -> dict[str, dict]:
    """Each contender once per round, the order reversed every other round; per contender
    the run with the least CPU time (one thread: the clock a loaded machine disturbs least)."""
    best: dict[str, dict] = {}
    for r in range(rounds):
        for key in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            out = fns[key]()
            print(f"#   round {r} {key}: {out['seconds']:.1f} s, cpu {out['cpu']:.1f} s (user "
                  f"{out['user']:.1f}, system {out['sys']:.1f}, {out['faults']} minor page "
                  "faults)", flush=True)
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
             o["seconds"], o["cpu"], o["model"], o["fwd"], o["bwd"]) for k, o in best.items()]
    table(rows, ("model", "eps", what, "robust_acc", "seconds", "cpu s", "in model s",
                 "fwd rows", "bwd"))
    for k, o in best.items():
        print(f"#   {k} members (s): {members_line(o)}")
    return [{"model": name, "eps": eps, "n": len(x), what: k, "robust_accuracy": acc,
             "seconds": sec, "cpu_seconds": cpu, "user_seconds": best[k]["user"],
             "system_seconds": best[k]["sys"], "minor_faults": best[k]["faults"],
             "model_seconds": in_model, "own_seconds": sec - in_model,
             "fwd_rows": fwd, "bwd": bwd, "members": best[k]["members"],
             "robust": robust_indices(model, x, best[k]["x_adv"], y)}
            for name, eps, k, acc, sec, cpu, in_model, fwd, bwd in rows]


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


def square_seeds(ref: Any, model: nn.Module, x: Tensor, y: Tensor, eps: float,
                 images: list[int], seeds: int) -> list[dict[str, Any]]:
    """Per image, the seeds (of 0 ... seeds - 1) from which Square (5,000 queries, AutoAttack's
    settings, from the clean image) fools it, in advlab and in the reference."""
    square_attack = importlib.import_module(f"{ref.__name__}.square").SquareAttack
    out = []
    for i in images:
        xi, yi = x[i:i + 1], y[i:i + 1]
        fooled: dict[str, list[int]] = {"advlab": [], "reference": []}
        for seed in range(seeds):
            res = advlab.attacks.get("square", eps=eps, max_queries=5000, seed=seed)(model, xi, yi)
            if res.success.item():
                fooled["advlab"].append(seed)
            square = square_attack(model, p_init=0.8, n_queries=5000, eps=eps, norm="Linf",
                                   n_restarts=1, seed=seed, device="cpu", resc_schedule=False)
            with torch.no_grad():
                if model(square.perturb(xi, yi)).argmax(1).item() != yi.item():
                    fooled["reference"].append(seed)
        print(f"# image {i}: fooled from {len(fooled['advlab'])} of {seeds} seeds by advlab's "
              f"Square, {len(fooled['reference'])} by the reference's", flush=True)
        out.append({"image": i, "eps": eps, "seeds": seeds, "fooled_from_seeds": fooled})
    return out


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
    p.add_argument("--images", nargs="+", type=int, default=[157, 96],
                   help="square-seeds: the images (indices into the test set)")
    p.add_argument("--seeds", type=int, default=10, help="square-seeds: seeds per image")
    p.add_argument("--out", default=None, help="JSON file of the reference section; default "
                   "results/autoattack_vs_reference-<models>-n<n>.json beside this script")
    args = p.parse_args()
    tag = "_".join(m.replace(":", "-") for m in args.models)
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    out = args.out or os.path.join(results, f"autoattack_vs_reference-{tag}-n{args.n}"
                                   f"{'' if args.budget == 1 else f'-budget{args.budget:g}'}.json")
    out_stronger = os.path.join(results, f"autoattack_vs_reference-stronger-{tag}-n{args.n}.json")
    records: list[dict[str, Any]] = []
    stronger: list[dict[str, Any]] = []
    torch.set_num_threads(args.threads)
    ref = None
    if {"reference", "square-seeds"} & set(args.sections):
        if args.ref is None:
            print("# reference: no --ref / ADVLAB_AUTOATTACK_REF given; sections reference "
                  "and square-seeds skipped")
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
            path = os.path.join(results, f"autoattack_vs_reference-blocks-{name}.json")
            save([{"section": "blocks", "model": name, "torch": torch.__version__,
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "threads": args.threads, "loadavg": os.getloadavg(), "rows": 512,
                   "rounds": args.rounds + 2, "us_per_row": us}], path)
            print(f"# results: {path}")
    if "square-seeds" in args.sections and ref is not None:
        for spec in args.models:
            name, eps_s = spec.split(":")
            rows = square_seeds(ref, load_model(name), x_all, y_all, float(eps_s), args.images,
                                args.seeds)
            path = os.path.join(results, f"autoattack_vs_reference-square-seeds-{name}.json")
            save([{**r, "model": name, "torch": torch.__version__} for r in rows], path)
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
            own = [best[k]["seconds"] - best[k]["model"] for k in ("reference", "advlab")]
            print(f"# time ratio reference / advlab: wall {ratio:.2f}, cpu {cpu:.2f}; outside "
                  f"the model {own[0]:.1f} / {own[1]:.1f} s = {own[0] / own[1]:.2f}", flush=True)
            save(records, out)
        if "stronger" in args.sections:
            best = race({"autoattack": lambda: run_advlab("autoattack", counted, x, y, eps),
                         "autoattack-mt": lambda: run_advlab("autoattack-mt", counted, x, y,
                                                             eps)}, args.rounds)
            stronger += show(best, model, name, x, y, eps, "attack")
            for rec in stronger[-2:]:
                rec.update(rounds=args.rounds, loadavg=os.getloadavg(), torch=torch.__version__)
            cost = best["autoattack-mt"]["seconds"] / best["autoattack"]["seconds"]
            cpu = best["autoattack-mt"]["cpu"] / best["autoattack"]["cpu"]
            print(f"# cost autoattack-mt / autoattack: wall {cost:.2f}, cpu {cpu:.2f}",
                  flush=True)
            save(stronger, out_stronger)
    for done, path in ((records, out), (stronger, out_stronger)):
        if done:
            print(f"# results: {path}")


if __name__ == "__main__":
    main()
