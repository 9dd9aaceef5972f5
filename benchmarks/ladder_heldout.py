"""The ladder on masked defenses it was not developed on (held out from tests/masked_suite.py).

The masked suite was the ladder's development set. These six defenses were written after it,
each an ordinary ``nn.Module`` around the zoo's mnist-cnn, in ways the suite does not use:

- inline-round: ``torch.round`` inside ``forward`` (no submodule to probe);
- inline-thermo: a thermometer code by comparisons inside ``forward``, decoded by its mean;
- zero-grad-fn: a custom ``autograd.Function`` that quantises forward and returns a zero
  gradient (gradient obfuscation by a hand-written backward);
- inline-where: binarisation at 0.5 with ``torch.where`` (a strong MNIST defense at eps 0.3:
  pixels near 0 or 1 cannot cross 0.5, so a high figure is expected and honest);
- resize-pad: random resizing and padding (Xie et al. 2018) from the global RNG;
- scaled-logits: logits times 1e4 (a saturated softmax without the log-softmax).

For each: the sanity checks (:func:`advlab.evaluation.sanity.run_all`) on the first n
correctly classified mnist5k test images, then :func:`advlab.evaluation.ladder.settle` with
the undefended mnist-cnn as the named base model, and no defense-specific code.

Usage: PYTHONPATH=src python benchmarks/ladder_heldout.py [--n 30] [--eps 0.3] [--only a,b]
Writes benchmarks/results/ladder_heldout.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import advlab
from advlab.evaluation import ladder, sanity

OUT = Path(__file__).parent / "results" / "ladder_heldout.json"


class InlineRound(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        return self.base(torch.round(x * 3) / 3)


class InlineThermo(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("levels", torch.linspace(0.05, 0.95, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.base((x.unsqueeze(-1) > self.levels).float().mean(-1))


class _ZeroGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:  # noqa: ARG004
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx: object, g: Tensor) -> Tensor:  # noqa: ARG004
        return torch.zeros_like(g)


class ZeroGradFn(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        return self.base(_ZeroGradient.apply(x))


class InlineWhere(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        return self.base(torch.where(x > 0.5, torch.ones_like(x), torch.zeros_like(x)))


class ResizePad(nn.Module):
    """Random resize to r x r, r in [22, 28], and a random zero pad back to 28 x 28."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        r = int(torch.randint(22, 29, ()).item())
        z = F.interpolate(x, size=(r, r), mode="nearest")
        p = 28 - r
        left, top = (int(torch.randint(0, p + 1, ()).item()) for _ in range(2))
        return self.base(F.pad(z, (left, p - left, top, p - top)))


class ScaledLogits(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) * 1e4


DEFENSES = {"inline-round": InlineRound, "inline-thermo": InlineThermo,
            "zero-grad-fn": ZeroGradFn, "inline-where": InlineWhere, "resize-pad": ResizePad,
            "scaled-logits": ScaledLogits}


def one(name: str, base: nn.Module, x: Tensor, y: Tensor, n: int, eps: float) -> dict:
    model = DEFENSES[name](base).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    xs, ys = x[ok][:n], y[ok][:n]
    t0 = time.perf_counter()
    findings = sanity.run_all(model, xs, ys, eps=eps, max_examples=n)
    s = ladder.settle(model, xs, ys, eps, findings, base=base)
    return {"defense": name, "eps": eps, "n": len(xs),
            "fired": [f.name for f in findings if f.fired], "ladder": s.robust_accuracy,
            "winner": s.winner, "settled": s.settled, "findings": s.findings,
            "rungs": [{"name": r.name, "new": r.new, "detail": r.detail} for r in s.rungs],
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--only", default="")
    args = p.parse_args()
    base = advlab.zoo.load("mnist-cnn")
    x, y = advlab.data.load("mnist5k", split="test")
    names = args.only.split(",") if args.only else list(DEFENSES)
    rows = []
    for name in names:
        rows.append(one(name, base, x[:400], y[:400], args.n, args.eps))
        r = rows[-1]
        print(f"{name:14s} n={r['n']} fired={','.join(r['fired']) or '-'} "
              f"ladder={100 * r['ladder']:.1f}% rung={r['winner']} settled={r['settled']} "
              f"{r['seconds']:.0f} s", flush=True)
    OUT.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
