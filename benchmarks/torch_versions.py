"""Every registered attack's strength on the torch this runs on, to compare torch versions.

    python benchmarks/torch_versions.py OUT.json          # once per installed torch
    python benchmarks/torch_versions.py --compare A.json B.json

Each attack runs with its defaults (targeted-only attacks aim at (y + 1) mod 10) on the first
20 correctly classified mnist5k test images of mnist-mlp, one thread. Per attack: success rate
and the median norm of the successful perturbations in the attack's own norm (L2 for the
patch). Strength figures, not times: they do not depend on the load of the machine.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch

import advlab


def measure(n: int) -> dict[str, dict[str, float]]:
    model = advlab.zoo.load("mnist-mlp")
    x, y = advlab.data.load("mnist5k", split="test")
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok][:n], y[ok][:n]
    out = {}
    for name, tax in sorted(advlab.attacks.available().items()):
        atk = advlab.attacks.get(name)
        target = (y + 1) % 10 if tax.goal == "targeted" else None
        res = atk(model, x, y, target=target)
        norm = tax.norm if tax.norm in res.norms else "l2"
        hit = res.success
        med = res.norms[norm][hit].median().item() if hit.any() else math.nan
        out[name] = {"success": hit.float().mean().item(), "median_norm": med, "norm": norm}
        print(f"{name:18s} success {out[name]['success']:6.1%}  median {norm} {med:.4f}",
              flush=True)
    return out


def compare(a: dict, b: dict) -> None:
    print(f"{'attack':18s} {'success A -> B':>18s} {'median norm A -> B':>24s}")
    for name in sorted(set(a["attacks"]) | set(b["attacks"])):
        ra, rb = a["attacks"].get(name), b["attacks"].get(name)
        if ra is None or rb is None:
            print(f"{name:18s} only in {'B' if ra is None else 'A'}")
            continue
        moved = (abs(ra["success"] - rb["success"]) > 1e-9
                 or not math.isclose(ra["median_norm"], rb["median_norm"], rel_tol=1e-3))
        print(f"{name:18s} {ra['success']:7.1%} -> {rb['success']:6.1%}   "
              f"{ra['median_norm']:9.4f} -> {rb['median_norm']:9.4f}"
              + ("   MOVED" if moved else ""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    ap.add_argument("-n", type=int, default=20)
    args = ap.parse_args()
    if args.compare:
        a, b = (json.load(open(p)) for p in args.compare)
        print(f"A: torch {a['torch']}   B: torch {b['torch']}")
        compare(a, b)
        return
    if not args.out:
        sys.exit("give OUT.json or --compare A B")
    torch.set_num_threads(1)
    result = {"torch": torch.__version__, "n": args.n, "attacks": measure(args.n)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
