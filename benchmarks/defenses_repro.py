"""Long reproductions of the defense stories (run by hand; each prints a table).

    python benchmarks/defenses_repro.py advtrain [--method trades] [--epochs 40] ...
    python benchmarks/defenses_repro.py distillation
    python benchmarks/defenses_repro.py transforms
    python benchmarks/defenses_repro.py pixeldefend
    python benchmarks/defenses_repro.py timing

Everything runs on CPU with one thread (torch.set_num_threads(1)) on mnist5k: train split
for training, the first ``--n`` test images for evaluation. Checkpoints and trained models go
under ``--out`` (default benchmarks/out/), so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import advlab
from advlab import attacks, defenses, zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402

log = logging.getLogger("defenses_repro")


def _robust(model: nn.Module, atk: attacks.Attack, x: Tensor, y: Tensor,
            batch: int = 250) -> Tensor:
    """Per-example success (bool) of an attack, in batches."""
    out = []
    for i in range(0, len(x), batch):
        out.append(atk(model, x[i:i + batch], y[i:i + batch]).success)
    return torch.cat(out)


def strong_attacks(eps: float) -> dict[str, attacks.Attack]:
    """PGD-40 and the strongest registered attacks (APGD-CE / APGD-DLR, 100 iterations)."""
    names = {"pgd-40": ("pgd", {"steps": 40}), "apgd-ce-100": ("apgd-ce", {"steps": 100}),
             "apgd-dlr-100": ("apgd-dlr", {"steps": 100})}
    out = {}
    for label, (name, kw) in names.items():
        if name in attacks.available():
            out[label] = attacks.get(name, eps=eps, **kw)
    return out


def evaluate_robust(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> dict[str, float]:
    """Clean accuracy, robust accuracy per attack, and the per-example worst case."""
    res = {"clean": zoo.accuracy(model, x, y)}
    fooled = torch.zeros(len(x), dtype=torch.bool)
    for label, atk in strong_attacks(eps).items():
        t0 = time.perf_counter()
        s = _robust(model, atk, x, y)
        fooled |= s
        res[label] = 1 - s.float().mean().item()
        log.info("%s: robust %.4f (%.0f s)", label, res[label], time.perf_counter() - t0)
    res["worst-case"] = 1 - fooled.float().mean().item()
    return res


# ----------------------------------------------------------------------------- advtrain


def cmd_advtrain(a: argparse.Namespace) -> None:
    x_tr, y_tr = advlab.data.load("mnist5k", "train")
    x_te, y_te = advlab.data.load("mnist5k", "test")
    x_te, y_te = x_te[:a.n], y_te[:a.n]
    kw: dict = {"epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size,
                "eps_ramp": a.ramp, "lr_schedule": a.schedule, "seed": a.seed}
    if a.augment:
        kw["augment"] = defenses.Translate(max_shift=a.augment)
    if a.val:
        # hold out every 8th training image for early stopping on robust accuracy
        held = torch.arange(len(x_tr)) % 8 == 7
        kw.update(x_val=x_tr[held], y_val=y_tr[held], patience=a.patience)
        x_tr, y_tr = x_tr[~held], y_tr[~held]
    name = f"{a.method}-e{a.epochs}-s{a.steps}-b{a.beta}-aug{a.augment}-val{int(a.val)}" \
           f"-{a.schedule}-r{a.ramp}"
    out = Path(a.out) / "advtrain" / name
    kw["checkpoint"] = out / "ckpt"
    base = zoo.build("mnist-cnn", seed=a.seed)
    t0 = time.perf_counter()
    if a.method == "trades":
        model = defenses.trades_training(base, x_tr, y_tr, eps=a.eps, beta=a.beta,
                                         steps=a.steps, **kw)
    elif a.method == "madry":
        model = defenses.madry_training(base, x_tr, y_tr, eps=a.eps, steps=a.steps, **kw)
    else:
        model = defenses.fast_training(base, x_tr, y_tr, eps=a.eps, **kw)
    train_s = time.perf_counter() - t0
    zoo.save(model, out / "model.safetensors", {"recipe": vars(a) | {"out": str(a.out)}})
    res = evaluate_robust(model, x_te, y_te, a.eps)
    res["train_seconds (this call)"] = round(train_s, 1)
    res["history"] = getattr(model, "train_history", [])
    (out / "result.json").write_text(json.dumps(res, indent=1))
    print(name)
    print(table([{k: v for k, v in res.items() if k != "history"}],
                [k for k in res if k != "history"]))


def main() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--n", type=int, default=1000, help="test images evaluated")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("advtrain", help="PGD / TRADES / fast adversarial training of mnist-cnn")
    t.add_argument("--method", choices=["madry", "trades", "fast"], default="trades")
    t.add_argument("--eps", type=float, default=0.3)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--beta", type=float, default=6.0)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--ramp", type=float, default=10.0, help="eps ramp epochs")
    t.add_argument("--schedule", default="step")
    t.add_argument("--augment", type=int, default=2, help="random translation (px), 0: none")
    t.add_argument("--val", action="store_true", help="early stopping on a held-out 1/8")
    t.add_argument("--patience", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=cmd_advtrain)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
