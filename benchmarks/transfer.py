"""Transfer attacks: source -> target success of advlab's MI/DI/TI/NI/SI-NI/VMI-FGSM against
torchattacks' implementations with the same settings, on the same images, in one process.

    python benchmarks/transfer.py [--n 200] [--eps 0.3] [--steps 10] [--peers torchattacks]

Models: the zoo's mnist-mlp and mnist-cnn, and two independently trained copies of their
architectures (initialisation seed 1, the zoo's training settings, trained here, about a
minute): mlp-b and cnn-b. Sources: mnist-mlp, mnist-cnn and their logit ensemble
(advlab.attacks.Ensemble). Each adversarial batch, crafted on a source, is shown to every
other model; a row reports the success on the source (white-box) and the transfer rate on
each target (misclassified, over the first n test images that every model classifies
correctly), and the wall time of the craft.

Settings, both libraries: Linf eps, T steps of eps / T, momentum 1.0; DI p 0.5 with the
shrink-and-pad transform to [0.9 H, H); TI Gaussian kernel 5 (+-3 sigma) with DI; SI 5
scales; VMI 20 neighbours at 1.5 eps.

Each run writes its table to benchmarks/results/transfer.json (with the date, torch version,
load average and settings); the default run takes a few minutes of CPU, most of it training
the two copies. advlab and torchattacks should transfer at the same rates within sampling
noise, which for the randomised attacks (DI, TI, SI, VMI) includes their random draws: a
single seed per library, n = 100, so compare several seeds before reading a difference.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from common import RESULTS, have, save, table
from torch import Tensor, nn

import advlab

Craft = Callable[[nn.Module, Tensor, Tensor], Tensor]

ADVLAB = {
    "MI": {},
    "DI": {"diversity": 0.5},
    "TI": {"diversity": 0.5, "kernel": 5},
    "NI": {"nesterov": True},
    "SI-NI": {"nesterov": True, "scales": 5},
    "VMI": {"variance": 20},
}


def trained_copy(name: str, seed: int) -> nn.Module:
    """The zoo architecture ``name``, initialised from ``seed``, trained like the zoo's."""
    x, y = advlab.data.load("mnist5k", split="train")
    settings = {"mnist-mlp": (20, 2e-3), "mnist-cnn": (8, 2e-3)}[name]
    model = advlab.zoo.build(name, seed=seed)
    return advlab.zoo.train(model, x, y, epochs=settings[0], lr=settings[1], seed=seed)


class Gray3(nn.Module):
    """A grey-level model seen as an RGB one (the mean of the channels): torchattacks' TI
    hard-codes 3 channels. Its three channels get equal gradients, hence equal signed steps,
    so the mean of its RGB result is the grey-level attack."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.mean(1, keepdim=True))


def advlab_craft(kind: str, eps: float, steps: int) -> Craft:
    attack = advlab.attacks.TransferAttack(eps, steps=steps, **ADVLAB[kind])
    return lambda m, x, y: attack(m, x, y).x_adv


def torchattacks_craft(kind: str, eps: float, steps: int) -> Craft:
    import torchattacks as ta

    a = eps / steps

    def run(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        atk = {
            "MI": lambda: ta.MIFGSM(m, eps=eps, alpha=a, steps=steps, decay=1.0),
            "DI": lambda: ta.DIFGSM(m, eps=eps, alpha=a, steps=steps, decay=1.0,
                                    resize_rate=0.9, diversity_prob=0.5),
            "TI": lambda: ta.TIFGSM(m, eps=eps, alpha=a, steps=steps, decay=1.0,
                                    len_kernel=5, nsig=3, resize_rate=0.9,
                                    diversity_prob=0.5),
            "NI": lambda: ta.NIFGSM(m, eps=eps, alpha=a, steps=steps, decay=1.0),
            "SI-NI": lambda: ta.SINIFGSM(m, eps=eps, alpha=a, steps=steps, decay=1.0, m=5),
            "VMI": lambda: ta.VMIFGSM(m, eps=eps, alpha=a, steps=steps, decay=1.0, N=20,
                                      beta=1.5),
        }[kind]()
        if kind == "TI":
            atk.model = Gray3(m).eval()
            return atk(x.expand(-1, 3, -1, -1).contiguous(), y).mean(1, keepdim=True)
        return atk(x, y)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--kinds", nargs="+", default=list(ADVLAB))
    ap.add_argument("--peers", nargs="*", default=["torchattacks"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = {"mnist-mlp": advlab.zoo.load("mnist-mlp"), "mnist-cnn": advlab.zoo.load("mnist-cnn"),
              "mlp-b": trained_copy("mnist-mlp", 1), "cnn-b": trained_copy("mnist-cnn", 1)}
    sources = {"mnist-mlp": models["mnist-mlp"], "mnist-cnn": models["mnist-cnn"],
               "mlp+cnn": advlab.attacks.Ensemble([models["mnist-mlp"], models["mnist-cnn"]])}
    members = {"mnist-mlp": {"mnist-mlp"}, "mnist-cnn": {"mnist-cnn"},
               "mlp+cnn": {"mnist-mlp", "mnist-cnn"}}
    x, y = advlab.data.load("mnist5k", split="test")
    with torch.no_grad():
        ok = torch.stack([m(x).argmax(1) == y for m in models.values()]).all(0)
    x, y = x[ok][:args.n], y[ok][:args.n]
    libs = {"advlab": advlab_craft}
    if "torchattacks" in args.peers and have("torchattacks"):
        libs["torchattacks"] = torchattacks_craft
    rows = []
    for kind in args.kinds:
        for src_name, src in sources.items():
            for lib, make in libs.items():
                craft = make(kind, args.eps, args.steps)
                t0 = time.perf_counter()
                x_adv = craft(src, x, y).detach().clamp(0, 1)
                dt = time.perf_counter() - t0
                assert (x_adv - x).abs().max() <= args.eps + 1e-6
                row = {"attack": kind, "source": src_name, "lib": lib, "time_s": dt}
                with torch.no_grad():
                    row["source_success"] = (src(x_adv).argmax(1) != y).float().mean().item()
                    for tname, tmodel in models.items():
                        if tname not in members[src_name]:  # a source is not its target
                            row[tname] = (tmodel(x_adv).argmax(1) != y).float().mean().item()
                rows.append(row)
                print(row, flush=True)
    columns = ["attack", "source", "lib", "source_success", *models, "time_s"]
    print(f"\n## transfer, Linf eps {args.eps}, {args.steps} steps, n = {len(x)}\n")
    print(table(rows, columns))
    print(save(RESULTS / "transfer.json", rows, columns, eps=args.eps, steps=args.steps,
               n=len(x), libs=list(libs), images="first n mnist5k test images every model "
               "classifies correctly", copies="mlp-b, cnn-b: zoo architectures, seed 1"))


if __name__ == "__main__":
    main()
