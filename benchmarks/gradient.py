"""FGSM / BIM / PGD: time against the floor and against the peers, strength side by side.

    python benchmarks/gradient.py [--batches 1 100 1000] [--models mnist-mlp mnist-cnn]

For each zoo model and batch size: advlab's time, the floor (steps x one forward+backward of
the model on the same batch), the overhead ratio (1.0 is the floor; early stopping is off so
every attack runs all its steps), and at batch 100 the same attack in ART, torchattacks and
foolbox with equal settings: time ratio (peer / advlab) and robust accuracy, re-checked on the
returned images; also against advlab with its default early stopping, which stops moving an
example once it is adversarial (same robust accuracy, fewer passes).

All contenders of a row run in interleaved rounds in one process and each keeps its fastest
round (see common.race), so the load of other processes falls on all of them alike; rows of a
few milliseconds run up to 40 times ``--rounds``.

Each run writes its table to benchmarks/results/gradient-batches-<batches>.json (with the
date, torch version and load average; ``--batches 100`` there): "overhead" = advlab's time
over the floor's; "<peer>_x" = the peer's time over advlab's with every step run (> 1:
advlab faster); "<peer>_v" = the same with the peer's success check added (a no-grad
forward on its images and the comparison with y, which advlab's result includes);
"<peer>_es" = against advlab with its default early stopping; "*_acc" = robust accuracy.

FGSM's floor is one forward+backward; advlab also runs the success forward the contract asks
for (the peers' "v"), validates x, y and the model's output (on the attack's own first
forward, no probe), and checks its output for NaN; the norms are computed when first read.
FGSM's rows last a few milliseconds: their ratios move by several percent with the load and
the contenders' order.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from common import RESULTS, floor_step, have, race, robust_accuracy, save, table, zoo_setup
from torch import Tensor, nn

import advlab

SETTINGS = {  # name: (eps, steps, alpha, random start)
    "fgsm": (0.3, 1, 0.3, False),
    "bim": (0.3, 10, 0.03, False),
    "pgd": (0.3, 40, 0.01, True),
}


def advlab_attack(name: str, early_stop: bool = False) -> advlab.attacks.Attack:
    """advlab's attack; ``early_stop`` (advlab's default) stops moving fooled examples."""
    eps, steps, alpha, _ = SETTINGS[name]
    if name == "fgsm":
        return advlab.attacks.FGSM(eps=eps)
    if name == "bim":
        return advlab.attacks.BIM(eps=eps, steps=steps, alpha=alpha, early_stop=early_stop)
    return advlab.attacks.PGD(eps=eps, steps=steps, alpha=alpha, early_stop=early_stop)


def peers(name: str, model: nn.Module, x: Tensor) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """Each installed peer's version of the attack, as (x, y) -> x_adv."""
    eps, steps, alpha, rand = SETTINGS[name]
    out: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
    if have("torchattacks"):
        import torchattacks as ta

        atk = {"fgsm": lambda: ta.FGSM(model, eps=eps),
               "bim": lambda: ta.BIM(model, eps=eps, alpha=alpha, steps=steps),
               "pgd": lambda: ta.PGD(model, eps=eps, alpha=alpha, steps=steps,
                                     random_start=rand)}[name]()
        out["torchattacks"] = lambda xx, yy, a=atk: a(xx, yy)
    if have("art"):
        from art.attacks.evasion import (
            BasicIterativeMethod,
            FastGradientMethod,
            ProjectedGradientDescent,
        )
        from common import art_classifier

        clf = art_classifier(model, tuple(x.shape[1:]))
        n = len(x)
        atk = {"fgsm": lambda: FastGradientMethod(clf, eps=eps, batch_size=n),
               "bim": lambda: BasicIterativeMethod(clf, eps=eps, eps_step=alpha, max_iter=steps,
                                                   batch_size=n, verbose=False),
               "pgd": lambda: ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=alpha,
                                                       max_iter=steps, num_random_init=1,
                                                       batch_size=n, verbose=False)}[name]()
        out["art"] = lambda xx, yy, a=atk: torch.from_numpy(a.generate(xx.numpy(), yy.numpy()))
    if have("foolbox"):
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        atk = {"fgsm": lambda: fb.attacks.FGSM(),
               "bim": lambda: fb.attacks.LinfBasicIterativeAttack(abs_stepsize=alpha,
                                                                  steps=steps),
               "pgd": lambda: fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps,
                                                 random_start=rand)}[name]()
        out["foolbox"] = lambda xx, yy, a=atk: a(fmodel, xx, yy, epsilons=eps)[1]
    return out


def success_check(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    """What a peer's user runs on its images to know which examples succeeded."""
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--models", nargs="+", default=["mnist-mlp", "mnist-cnn"])
    ap.add_argument("--peer-batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model_name in args.models:
        for n in args.batches:
            model, x, y = zoo_setup(model_name, n)
            for name, (_, steps, _, _) in SETTINGS.items():
                atk, es = advlab_attack(name), advlab_attack(name, early_stop=True)
                x_adv = atk(model, x, y).x_adv  # what a success check runs on
                fns = {"advlab": lambda a=atk: a(model, x, y).x_adv,
                       "advlab-es": lambda a=es: a(model, x, y).x_adv,
                       "floor": floor_step(model, x, y, steps),
                       "forward": lambda xa=x_adv: success_check(model, xa, y)}
                if n == args.peer_batch:
                    fns.update({k: lambda r=run: r(x, y)
                                for k, run in peers(name, model, x).items()})
                # cheap rows (a few ms) get more rounds, up to 40x: their minima need them
                rounds = args.rounds * min(40, max(1, 4000 // (n * steps))) \
                    if n * steps <= 40_000 else 1
                t, out = race(fns, rounds)
                row = {"model": model_name, "batch": n, "attack": name, "advlab_s": t["advlab"],
                       "floor_s": t["floor"], "overhead": t["advlab"] / t["floor"],
                       "advlab_acc": robust_accuracy(model, x, y, out["advlab"]),
                       "es_acc": robust_accuracy(model, x, y, out["advlab-es"])}
                for peer in fns.keys() - {"advlab", "advlab-es", "floor", "forward"}:
                    row[f"{peer}_x"] = t[peer] / t["advlab"]
                    row[f"{peer}_es"] = t[peer] / t["advlab-es"]
                    row[f"{peer}_v"] = (t[peer] + t["forward"]) / t["advlab"]
                    row[f"{peer}_acc"] = robust_accuracy(model, x, y, out[peer].to(x.dtype))
                rows.append(row)
                print(table([row], list(row)), flush=True)
    cols = ["model", "batch", "attack", "advlab_s", "floor_s", "overhead", "advlab_acc", "es_acc"]
    cols += [f"{p}_{k}" for p in ("torchattacks", "art", "foolbox")
             for k in ("x", "v", "es", "acc")]
    print("\n" + table(rows, cols))
    batches = "-".join(map(str, args.batches))
    print(save(RESULTS / f"gradient-batches-{batches}.json", rows, cols, section="batches",
               models=args.models, batches=args.batches, peer_batch=args.peer_batch,
               rounds=args.rounds, timing="fastest of interleaved rounds, one process"))
    print("\n*_x: peer time / advlab time with every step run (>1: advlab faster), images "
          "only;\n*_v: the same with the peer's one forward pass on its images added, to know "
          "which\nsucceeded (advlab returns that verdict, re-checked); *_es: peer time / advlab "
          "time with\nadvlab's default early stopping (es_acc: its robust accuracy); *_acc: "
          "robust accuracy")


if __name__ == "__main__":
    main()
