"""The rungs of the adaptive-attack ladder (:mod:`advlab.evaluation.ladder`): the
settings of a climb, its state, and the attacks of each rung, each judged on the real model."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from advlab import attacks
from advlab.attacks.base import Attack, Model
from advlab.attacks.blackbox.hopskipjump import HopSkipJump
from advlab.attacks.blackbox.square import Square
from advlab.attacks.eot import eot
from advlab.evaluation.surrogates import flat, has_gradient, judge
from advlab.threat import as_eps, ball, clip_box

RUNGS = ("logits", "bpda", "transfer", "square", "label")
GRADIENT_RUNGS = ("logits", "bpda", "transfer")
UNBOUNDED_EPS, UNBOUNDED_RATE = 1.0, 0.95


@dataclass
class Rung:
    """One rung's outcome.

    Attributes:
        name: one of :data:`RUNGS`.
        detail: what ran (attacks, surrogates, replaced layers).
        attacked: examples it attacked (those still robust when it began).
        new: examples it fooled that no earlier rung had.
        robust_accuracy: the ladder's robust accuracy after it (worst case so far).
        seconds: its wall time.
        unbounded: for a gradient rung, its success rate with eps = 1 (None otherwise).
    """

    name: str
    detail: str
    attacked: int
    new: int
    robust_accuracy: float
    seconds: float
    unbounded: float | None = None




@dataclass
class Options:
    """The ladder's settings (the ``[ladder]`` table of a run's configuration).

    Attributes:
        steps: APGD iterations per gradient attack.
        eot_samples: EOT draws per gradient step for a randomised model.
        draws: forward passes judging a randomised model (majority).
        square_queries: Square's query budget per example and per ``p_init`` (0: skip).
        p_inits: Square's initial window fractions, tried in order.
        label_queries: HopSkipJump's query budget per example (0: skip the rung).
        distill_epochs: training passes of the distilled surrogate (0: no distillation).
        unbounded_examples: examples the unbounded re-check of a gradient rung uses.
        rungs: the rungs to climb, in order (a subset of :data:`RUNGS`).
        tol: the slack of the rate comparisons.
        exhaustive: climb every rung even when the findings are settled.
    """

    steps: int = 100
    eot_samples: int = 10
    draws: int = 5
    square_queries: int = 1000
    p_inits: tuple[float, ...] = (0.8, 0.3, 0.05)
    label_queries: int = 1000
    distill_epochs: int = 4
    unbounded_examples: int = 32
    rungs: tuple[str, ...] = RUNGS
    tol: float = 0.02
    exhaustive: bool = False


@dataclass
class Climb:
    model: Model
    x: Tensor
    y: Tensor
    eps: float
    draws: int
    x_adv: Tensor
    fooled: Tensor
    rungs: list[Rung] = field(default_factory=list)
    white: Tensor | None = None  # fooled by the gradient rungs (and the naive attacks)

    def take(self, x_adv: Tensor, idx: Tensor) -> int:
        """Judge candidates for the examples ``idx`` on the real model; keep new wins."""
        won = judge(self.model, x_adv, self.y[idx], self.draws) & ~self.fooled[idx]
        hit = idx[won]
        self.x_adv[hit] = x_adv[won]
        self.fooled[hit] = True
        return int(won.sum())

    @property
    def robust(self) -> Tensor:
        return (~self.fooled).nonzero().flatten()


def gradient_attacks(eps: float, steps: int, classes: int, randomized: bool,
                      samples: int, seed: int, random_start: bool = True) -> list[Attack]:
    """APGD-CE and APGD-DLR (CE only below 3 classes), with EOT when randomised."""
    losses = ["ce", "dlr"] if classes >= 3 else ["ce"]
    out: list[Attack] = []
    for loss in losses:
        a = attacks.get(f"apgd-{loss}", eps=eps, steps=steps, seed=seed,
                        random_start=random_start, early_stop=not randomized)
        out.append(eot(a, transform=[], samples=samples) if randomized else a)
    return out


def passed_unbounded(rungs: Sequence[Rung]) -> bool:
    """Some gradient rung passed the unbounded re-check (eps = 1 fools >= 95%)."""
    return any(r.unbounded is not None and r.unbounded >= UNBOUNDED_RATE for r in rungs)


def run_gradient_rung(state: Climb, name: str, detail: str, targets: Sequence[Model],
                  opts: Options, randomized: bool, classes: int, seed: int) -> None:
    """A gradient rung: every attack on every target model, judged on the real model, then
    the unbounded re-check of the same attacks on the first examples, unless an earlier rung
    passed it already (its ``unbounded`` is then None)."""
    t0, new = time.perf_counter(), 0
    atks = gradient_attacks(state.eps, opts.steps, classes, randomized, opts.eot_samples, seed)
    blind = [t for t in targets if not has_gradient(t, state.x[:2])]
    if blind:
        detail += f" ({len(blind)} target(s) without a graph to the input, skipped)"
        targets = [t for t in targets if t not in blind]
    g = torch.Generator(device=state.x.device).manual_seed(seed)
    attacked, stuck = len(state.robust), 0
    for target in targets:
        idx, won, n_stuck = _drop_flat(state, target, state.robust, g)
        new, stuck = new + won, stuck + n_stuck
        for atk in atks:
            idx = idx[~state.fooled[idx]]
            if len(idx) == 0:
                break
            new += state.take(atk(target, state.x[idx], state.y[idx]).x_adv, idx)
    if stuck:
        detail += f" ({stuck} example-target pairs with an exactly zero Jacobian, not attacked)"
    state.white = state.fooled.clone()
    if passed_unbounded(state.rungs):  # a gradient already leads somewhere: nothing to learn
        state.rungs.append(Rung(name, detail, attacked, new,
                                1 - state.fooled.float().mean().item(), time.perf_counter() - t0))
        return
    n = min(opts.unbounded_examples, len(state.x))
    unb = gradient_attacks(UNBOUNDED_EPS, opts.steps, classes, randomized, opts.eot_samples,
                            seed, random_start=False)
    wide = torch.zeros(n, dtype=torch.bool, device=state.x.device)
    for target in targets:
        moving = ~flat(target, state.x[:n], g)
        for atk in unb:
            rest = (~wide & moving).nonzero().flatten()
            if len(rest):
                xa = atk(target, state.x[:n][rest], state.y[:n][rest]).x_adv
                wide[rest] |= judge(state.model, xa, state.y[:n][rest], state.draws)
    state.rungs.append(Rung(name, detail, attacked, new, 1 - state.fooled.float().mean().item(),
                            time.perf_counter() - t0,
                            wide.float().mean().item() if targets else None))


def _drop_flat(state: Climb, target: Model, idx: Tensor, g: torch.Generator
               ) -> tuple[Tensor, int, int]:
    """The examples of ``idx`` a gradient attack on ``target`` can move from: where the
    target's Jacobian is exactly zero both at x and at a random point of the eps-ball, an
    attack started at either stays there, so that random point is judged instead.

    Returns:
        the examples to attack, the wins among the others, how many others."""
    x = state.x[idx]
    start = clip_box(x + ball("linf").random(x, as_eps(state.eps, len(x), x), g))
    stuck = flat(target, x, g) & flat(target, start, g)
    won = state.take(start[stuck], idx[stuck]) if bool(stuck.any()) else 0
    return idx[~stuck], won, int(stuck.sum())


def square_rung(state: Climb, opts: Options, seed: int) -> None:
    t0, new, attacked, used = time.perf_counter(), 0, len(state.robust), []
    for p in opts.p_inits:
        idx = state.robust
        if len(idx) == 0:
            break
        atk = Square(eps=state.eps, max_queries=opts.square_queries, p_init=p, seed=seed)
        found = state.take(atk(state.model, state.x[idx], state.y[idx]).x_adv, idx)
        new += found
        used.append(f"p_init={p:g}: {found}")
        if found == 0:  # a fresh search that finds nothing new: the next ones will not either
            break
    state.rungs.append(Rung("square", f"Square, {opts.square_queries} queries; "
                            + ", ".join(used), attacked, new,
                            1 - state.fooled.float().mean().item(), time.perf_counter() - t0))


def label_rung(state: Climb, opts: Options, seed: int) -> None:
    t0, idx = time.perf_counter(), state.robust
    new = 0
    if len(idx):
        res = HopSkipJump(norm="linf", max_queries=opts.label_queries, seed=seed)(
            state.model, state.x[idx], state.y[idx])
        inside = (res.x_adv - state.x[idx]).flatten(1).abs().amax(1) <= state.eps * (1 + 1e-6)
        keep = idx[inside]
        if len(keep):
            new = state.take(res.x_adv[inside], keep)
    state.rungs.append(Rung("label", f"HopSkipJump Linf, {opts.label_queries} queries",
                            len(idx), new, 1 - state.fooled.float().mean().item(),
                            time.perf_counter() - t0))


