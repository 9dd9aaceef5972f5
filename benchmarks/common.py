"""Shared benchmark mechanics: timing, counting model passes, the zoo set-up, and the peers.

Every benchmark compares in ONE process on the same model and batch: advlab against the
physical floor (steps x one forward+backward of the model) and against the peer libraries
(ART, torchattacks, foolbox) when they are installed. Absolute times across runs mean little
on a shared 2-core machine; ratios measured side by side do.
"""
from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn


class Counted(nn.Module):
    """Wraps a model and counts forward passes, rows (images) and backward passes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = self.rows = self.backwards = 0

    def reset(self) -> None:
        self.forwards = self.rows = self.backwards = 0

    def forward(self, x: Tensor) -> Tensor:
        self.forwards += 1
        self.rows += len(x)
        out = self.model(x)
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad: Tensor) -> None:
        self.backwards += 1


def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Median wall time of ``fn`` over ``repeat`` runs (after one warm-up), and its last output."""
    out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def race(fns: dict[str, Callable[[], object]], rounds: int = 5) -> tuple[dict[str, float],
                                                                        dict[str, object]]:
    """Each contender's fastest wall time over ``rounds`` interleaved rounds (after one
    warm-up each), and its last output. Interleaving exposes every contender to the same
    load, and the minimum discards the rounds that another process disturbed."""
    out = {k: f() for k, f in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            out[k] = f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best, out


def floor_step(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> Callable[[], None]:
    """The physical floor of an iterative attack: steps x one forward+backward w.r.t. x."""
    def one() -> None:
        for _ in range(steps):
            xa = x.detach().requires_grad_(True)
            loss = nn.functional.cross_entropy(model(xa), y)
            torch.autograd.grad(loss, xa)

    return one


def zoo_setup(name: str, n: int, split: str = "test") -> tuple[nn.Module, Tensor, Tensor]:
    """A zoo model and the first n images of mnist5k (repeated if n > the split's size)."""
    import advlab

    model = advlab.zoo.load(name)
    x, y = advlab.data.load("mnist5k", split=split)
    reps = -(-n // len(x))
    return model, x.repeat(reps, 1, 1, 1)[:n], y.repeat(reps)[:n]


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> float:
    """Fraction of examples correctly classified both clean and adversarial (re-checked)."""
    with torch.no_grad():
        ok = (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)
    return ok.float().mean().item()


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def art_classifier(model: nn.Module, shape: tuple[int, ...], classes: int = 10):  # noqa: ANN201
    """ART's PyTorchClassifier around a model taking [0, 1] inputs."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=shape,
                             nb_classes=classes, clip_values=(0.0, 1.0), device_type="cpu")


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of dict rows."""
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(columns, widths))
              for r in rows]
    return "\n".join(lines)
