"""The adaptive-attack ladder against the masked suite: naive / ladder / reference / winning rung.

For every defense of tests/masked_suite.py (ordinary nn.Modules that advlab never saw) and each
eps, on the first N correctly classified mnist5k test images (correct under the defense):

- naive: APGD-CE (100 steps) on the defense itself (where the defense's output has no graph
  to its input, on :class:`advlab.evaluation.ladder.Attached`: the gradient it sees is zero,
  as it is);
- the sanity checks (:func:`advlab.evaluation.sanity.run_all`, Square with 1,000 queries);
- ladder: :func:`advlab.evaluation.ladder.settle` with the findings, the undefended mnist-cnn as
  the named base model and a surrogate distilled from the defense's labels on the 4,000
  training images (:func:`advlab.evaluation.ladder.distill`, once per defense, when the first
  climb reaches the transfer rung; its time counted in that climb's cost); its robust
  accuracy, the winning rung, whether every finding is settled;
- reference: the hand-made adaptive attack of the suite member.

Every figure is judged on the real defense (majority of 5 passes for the randomised ones).
The ladder's cost is given as a multiple of the naive APGD-CE run's time on the same images in
the same process (a ratio: absolute times mean little on a shared machine). Targets: the ladder
within 2.5 points of the reference at eps 0.3 and 5 points at eps 0.1.

Usage: python benchmarks/ladder_suite.py [--n 200] [--eps 0.3 0.1] [--only a,b] [--out F.json]
       python benchmarks/ladder_suite.py --honest   (no false alarm on the zoo's honest models)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import advlab  # noqa: E402
import masked_suite  # noqa: E402
from advlab.evaluation import ladder, sanity  # noqa: E402


def one(m: masked_suite.Member, base: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
        eps: float, train: torch.Tensor, cache: dict) -> dict:
    torch.manual_seed(0)  # the defenses' own randomness (global RNG, as their authors wrote)
    t0 = time.perf_counter()
    net = m.model if ladder.has_gradient(m.model, x[:2]) else ladder.Attached(m.model)
    xa = advlab.attacks.get("apgd-ce", eps=eps, steps=100)(net, x, y).x_adv
    t_apgd = time.perf_counter() - t0
    naive = 1 - ladder.judge(m.model, xa, y, m.draws).float().mean().item()
    t0 = time.perf_counter()
    findings = sanity.run_all(m.model, x, y, eps=eps, max_examples=len(x))
    t_sanity = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = ladder.settle(m.model, x, y, eps, findings, base=base, train=train, naive=xa,
                      cache=cache)
    t_ladder = time.perf_counter() - t0
    t0 = time.perf_counter()
    xr = m.reference(x, y, eps)
    t_ref = time.perf_counter() - t0
    ref = 1 - ladder.judge(m.model, xr, y, m.draws).float().mean().item()
    return {"defense": m.name, "family": m.family, "eps": eps, "n": len(x),
            "fired": [f.name for f in findings if f.fired], "naive": naive,
            "ladder": s.robust_accuracy, "reference": ref, "winner": s.winner,
            "settled": s.settled, "findings": s.findings,
            "rungs": [{**vars(r)} for r in s.rungs],
            "seconds": {"apgd_ce": t_apgd, "sanity": t_sanity, "ladder": t_ladder,
                        "reference": t_ref},
            "ladder_cost_x_apgd": t_ladder / max(t_apgd, 1e-9)}


def honest(n: int, eps_grid: list[float]) -> None:
    """No false alarm: the sanity checks on the zoo's honest models (first n test images),
    and the ladder's cost there (it must not climb at all)."""
    from advlab import defenses

    x, y = advlab.data.load("mnist5k", split="test")
    x, y = x[:n], y[:n]
    for name in ("mnist-mlp", "mnist-cnn", "mnist-cnn-trades"):
        model = defenses.load_robust(name) if name.endswith("trades") else advlab.zoo.load(name)
        for eps in eps_grid:
            t0 = time.perf_counter()
            findings = sanity.run_all(model, x, y, eps=eps, max_examples=n,
                                      blackbox_queries=500)
            t_checks = time.perf_counter() - t0
            t0 = time.perf_counter()
            s = ladder.settle(model, x, y, eps, findings)
            t_ladder = time.perf_counter() - t0
            print(f"{name:18s} eps={eps:<4g} n={n} fired={[f.name for f in findings if f.fired]}"
                  f" rungs={[r.name for r in s.rungs]} checks {t_checks:.1f} s, ladder "
                  f"{t_ladder:.3f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--honest", action="store_true",
                    help="only the false-alarm run on mnist-mlp, mnist-cnn, mnist-cnn-trades")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.3, 0.1])
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ladder_suite.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.honest:
        honest(min(args.n, 100), args.eps)
        return
    torch.manual_seed(0)
    x_tr, y_tr = advlab.data.load("mnist5k", split="train")
    x_te, y_te = advlab.data.load("mnist5k", split="test")
    base = advlab.zoo.load("mnist-cnn")
    suite = masked_suite.build(base, x_tr, y_tr)
    only = [s for s in args.only.split(",") if s]
    out_path = Path(args.out)
    rows = json.loads(out_path.read_text()) if out_path.exists() else []
    for m in suite:
        if only and m.name not in only:
            continue
        torch.manual_seed(0)
        ok = ~ladder.judge(m.model, x_te[:1000], y_te[:1000], m.draws)
        x, y = x_te[:1000][ok][:args.n], y_te[:1000][ok][:args.n]
        cache: dict = {}  # the distilled surrogate: once per defense, when a climb needs it
        for eps in args.eps:
            r = one(m, base, x, y, eps, x_tr, cache)
            rows = [o for o in rows if (o["defense"], o["eps"]) != (m.name, eps)] + [r]
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(rows, indent=1))
            gap = 100 * (r["ladder"] - r["reference"])
            print(f"{m.name:22s} eps={eps:<4g} n={r['n']:3d} naive {100 * r['naive']:5.1f} "
                  f"ladder {100 * r['ladder']:5.1f} ref {100 * r['reference']:5.1f} "
                  f"(gap {gap:+5.1f}) rung {r['winner']} settled={r['settled']} "
                  f"cost {r['ladder_cost_x_apgd']:.1f}x APGD-CE", flush=True)
    print(table(rows))


def table(rows: list[dict]) -> str:
    """The markdown table of the results."""
    out = ["| defense | family | eps | n | naive | ladder | reference | gap | rung | settled "
           "| ladder cost (x APGD-CE) |", "|" + "---|" * 11]
    for r in sorted(rows, key=lambda r: (-r["eps"], r["family"], r["defense"])):
        out.append(f"| {r['defense']} | {r['family']} | {r['eps']:g} | {r['n']} | "
                   f"{100 * r['naive']:.1f} | {100 * r['ladder']:.1f} | "
                   f"{100 * r['reference']:.1f} | {100 * (r['ladder'] - r['reference']):+.1f} "
                   f"| {r['winner']} | {r['settled']} | {r['ladder_cost_x_apgd']:.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
