"""Shared benchmark mechanics: timing, counting model passes, the zoo set-up, the peers, and
the side-by-side comparison that writes its tables to benchmarks/results.

Every benchmark compares in ONE process on the same model and batch: advlab against the
physical floor (steps x one forward+backward of the model) and against the peer libraries
(ART, torchattacks, foolbox) when they are installed. Absolute times across runs mean little
on a shared 2-core machine; ratios measured side by side do.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import advlab

RESULTS = Path(__file__).parent / "results"
#: the peer libraries a comparison runs when installed (``--peers`` narrows it)
PEERS = ["foolbox", "art", "torchattacks"]
#: one attack on (x, y, target or None), returning x_adv
Run = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


class Counted(nn.Module):
    """Wraps a model and counts forward passes, rows (images), backward passes and the rows
    that go through them (``bw_rows``), and times the model's own work (``seconds``): its
    forwards, and each backward w.r.t. its input from the gradient reaching its output to the
    gradient at its input (overlapping backwards, as over several blocks at once, count once).
    What an attack spends outside ``seconds`` is its own work."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.forwards = self.rows = self.backwards = self.bw_rows = 0
        self.seconds, self._open, self._since = 0.0, 0, 0.0

    def forward(self, x: Tensor) -> Tensor:
        self.forwards += 1
        self.rows += len(x)
        start = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - start
        if out.requires_grad:
            out.register_hook(self._count_backward)
            if x.requires_grad:  # a backward w.r.t. the input: timed from output to input
                out.register_hook(self._backward_starts)
                x.register_hook(self._backward_ends)
        return out

    def _count_backward(self, grad: Tensor) -> None:
        self.backwards += 1
        self.bw_rows += len(grad)

    def _backward_starts(self, grad: Tensor) -> None:
        if self._open == 0:
            self._since = time.perf_counter()
        self._open += 1

    def _backward_ends(self, grad: Tensor) -> None:
        if self._open == 0:  # the input's gradient without one through the model
            return
        self._open -= 1
        if self._open == 0:
            self.seconds += time.perf_counter() - self._since


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
    model = advlab.zoo.load(name)
    x, y = advlab.data.load("mnist5k", split=split)
    reps = -(-n // len(x))
    return model, x.repeat(reps, 1, 1, 1)[:n], y.repeat(reps)[:n]


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> float:
    """Fraction of examples correctly classified both clean and adversarial (re-checked)."""
    with torch.no_grad():
        ok = (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)
    return ok.float().mean().item()


def correct_subset(model: nn.Module, n: int) -> tuple[Tensor, Tensor]:
    """The first n correctly classified images of the mnist5k test split."""
    x, y = advlab.data.load("mnist5k", split="test")
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def peer(name: str) -> bool:
    """A peer library that is installed and selected (``PEERS``, set by ``--peers``)."""
    return name in PEERS and have(name)


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


# ------------------------------------------------------------------ side-by-side comparisons
# One attack per row: each library's attack becomes a Run on the same Counted model, measure()
# times it and re-checks its success, summarise() adds the norms; compare() runs the chosen
# sections on each model and saves each table to results/<script>-<section>-<model>.json.


def measure(name: str, fn: Run, meter: Counted, x: Tensor, y: Tensor,
            target: Tensor | None = None) -> dict:
    """Run one attack once; time, evaluations, re-checked success, norms."""
    meter.reset()
    t0 = time.perf_counter()
    x_adv = fn(x, y, target).detach().float().clamp(0, 1)
    dt = time.perf_counter() - t0
    with torch.no_grad():
        pred = meter.model(x_adv).argmax(1)
    ok = pred != y if target is None else pred == target
    d = (x_adv - x).flatten(1)
    n = len(x)
    return {"lib": name, "time_s": dt, "fwd/img": meter.rows / n, "bwd/img": meter.bw_rows / n,
            "success": ok.float().mean().item(), "ok": ok, "l2": d.norm(dim=1),
            "l1": d.abs().sum(1), "linf": d.abs().amax(1), "l0": (d.abs() > 1e-7).sum(1).float(),
            "x_adv": x_adv}


def median_ok(row: dict, norm: str) -> float | None:
    """The median of a measured row's norm over its successes (None without any)."""
    return row[norm][row["ok"]].median().item() if row["ok"].any() else None


def summarise(rows: list[dict], norm: str) -> list[dict]:
    """Median/mean norm over successes, and the median over the images every row fooled."""
    common = torch.stack([r["ok"] for r in rows]).all(0)
    out = []
    for r in rows:
        v = r[norm]
        s = dict(r)
        s[f"med_{norm}"] = v[r["ok"]].median().item() if r["ok"].any() else float("nan")
        s[f"mean_{norm}"] = v[r["ok"]].mean().item() if r["ok"].any() else float("nan")
        s[f"med_{norm}_common"] = v[common].median().item() if common.any() else float("nan")
        s["n_common"] = int(common.sum())
        out.append(s)
    return out


def advlab_run(attack: advlab.attacks.Attack, model: nn.Module) -> Run:
    return lambda x, y, t: attack(model, x, y, target=t).x_adv


def art_run(make: Callable, model: nn.Module, x: Tensor) -> Run:
    """An ART attack, ``make(classifier)``, as a Run (targets as one-hot labels)."""
    atk = make(art_classifier(model, tuple(x.shape[1:])))

    def run(xx: Tensor, yy: Tensor, t: Tensor | None) -> Tensor:
        if t is None:
            return torch.from_numpy(atk.generate(xx.numpy()))
        onehot = np.eye(10, dtype=np.float32)[t.numpy()]
        return torch.from_numpy(atk.generate(xx.numpy(), y=onehot))
    return run


def foolbox_run(atk: object, model: nn.Module) -> Run:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))

    def run(xx: Tensor, yy: Tensor, t: Tensor | None) -> Tensor:
        crit = yy if t is None else fb.criteria.TargetedMisclassification(t)
        return atk(fmodel, xx, crit, epsilons=None)[1]
    return run


def torchattacks_run(atk: object) -> Run:
    def run(xx: Tensor, yy: Tensor, t: Tensor | None) -> Tensor:
        if t is None:
            return atk(xx, yy)
        atk.set_mode_targeted_by_label(quiet=True)
        return atk(xx, t)
    return run


def save(path: Path, rows: list[dict], columns: list[str], **fields: object) -> Path:
    """A table as JSON at ``path``: ``fields``, the date, torch version, threads and load
    average (times are ratios at best on a loaded machine), and the rows (their ``columns``
    only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        **fields, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "rows": [{c: r[c] for c in columns if c in r} for r in rows]}, indent=1) + "\n")
    return path


@dataclass
class Section:
    """One table of a comparison: its rows on (model, x, y), its columns, its image count, the
    settings written beside it and the results file name's tail."""

    rows: Callable[[Counted, Tensor, Tensor], list[dict]]
    columns: list[str]
    n: int
    settings: dict = field(default_factory=dict)
    tail: str = ""


def parser(doc: str | None, sections: list[str], models: list[str]) -> argparse.ArgumentParser:
    """The options every comparison takes: --sections, --models, --n, --peers, --results."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=sections, choices=sections)
    ap.add_argument("--models", nargs="+", default=models)
    ap.add_argument("--n", type=int, default=100, help="images (where a section has no own)")
    ap.add_argument("--peers", nargs="*", default=list(PEERS), help="peer libraries to run")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="folder for the JSON tables (another one for trial runs)")
    return ap


def compare(script: str, args: argparse.Namespace, sections: dict[str, Section]) -> None:
    """Each chosen section on each model, on the first correctly classified mnist5k test
    images, one thread: print its table and save it to
    <--results>/<script>-<section>-<model><tail>.json."""
    PEERS[:] = args.peers
    torch.set_num_threads(1)
    chosen = {k: sections[k] for k in args.sections}
    for name in args.models:
        model = Counted(advlab.zoo.load(name)).eval()
        x, y = correct_subset(model.model, max(s.n for s in chosen.values()))
        for key, sec in chosen.items():
            rows = sec.rows(model, x[:sec.n], y[:sec.n])
            print(f"\n## {key} on {name}\n")
            print(table(rows, sec.columns), flush=True)
            path = args.results / f"{script}-{key}-{name}{sec.tail}.json"
            print(save(path, rows, sec.columns, section=key, model=name, n=sec.n,
                       images="first correctly classified of mnist5k test", peers=PEERS,
                       **sec.settings))
