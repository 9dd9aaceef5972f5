r"""Carlini & Wagner's optimisation attacks, L2 and Linf (the lecture's C&W slides).

Both minimise a distance plus ``c`` times the margin loss of the logits Z,

.. math::  \min_{x'}\ D(x', x) + c\, f(x'), \qquad
           f(x') = \max\big(Z(x')_y - \max_{i \ne y} Z(x')_i,\ -\kappa\big)

for an untargeted attack, and :math:`f(x') = \max(\max_{i \ne t} Z(x')_i - Z(x')_t, -\kappa)`
for a targeted one (the lecture's :math:`\mathcal{L}` with a confidence :math:`\kappa`;
:func:`advlab.losses.margin`, correct for negative logits). f reaches its floor
:math:`-\kappa` exactly when the example is adversarial with margin :math:`\kappa`.

Box constraint, ``box=``:

- ``"tanh"`` (the paper's change of variables): optimise w with
  :math:`x' = \tfrac12(\tanh w + 1)`. Here it is written as an offset from x,
  :math:`x' = \mathrm{clip}(x + \tfrac12(\tanh w - \tanh w_0))` with
  :math:`w_0 = \operatorname{atanh}((2x - 1)(1 - 2\epsilon_{\tanh}))`, so the search starts
  exactly at x (no L2/L0 offset from the shrink) whatever ``tanh_eps``. A pixel at 0 or 1
  starts where :math:`d x'/dw = 2\epsilon_{\tanh}(1 - \epsilon_{\tanh})`: with the paper's
  tiny shrink (``tanh_eps=1e-6``) Adam needs hundreds of steps to move it — most MNIST
  pixels are exactly 0 or 1 and are effectively frozen.
- ``"clip"``: projected Adam in pixel space, :math:`x' = \mathrm{clip}(x + \delta)` and
  :math:`\delta` projected back into the box after every step; no pixel is frozen.

The default, ``box="clip"``, was chosen by measurement (mnist-cnn, 30 test images,
untargeted, 9 search steps of 100 Adam steps; ``python benchmarks/whitebox_minnorm.py
--sections cw-box --n 30``, figures in benchmarks/results/whitebox_minnorm-cw-box-mnist-cnn.json):
the frozen pixels cost the tanh variables (``tanh_eps`` 1e-6 or 1e-2) most of their successes
at a budget of 100 steps, where projected Adam fools every image; with ten times the steps
they catch up, still slightly behind projected Adam in L2.

References: Carlini & Wagner, "Towards evaluating the robustness of neural networks",
IEEE S&P 2017, arXiv:1608.04644.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, register
from advlab.attacks.minnorm import (
    Best,
    ConstantSearch,
    confirm,
    cw_margin,
    cw_success,
    still_improving,
)
from advlab.attacks.settings import Settings, at_least, one_of, positive
from advlab.errors import ThreatModelError
from advlab.optim import RowAdam
from advlab.threat import broadcast_rows, clip_box

BOXES = ("tanh", "clip")


class Box:
    """The change of variables w <-> x' of one batch (see the module docstring)."""

    def __init__(self, kind: str, x: Tensor, tanh_eps: float) -> None:
        self.kind, self.x = kind, x
        if kind == "tanh":
            self.w0 = torch.atanh((2 * x - 1) * (1 - 2 * tanh_eps))
            self.t0 = torch.tanh(self.w0)

    def start(self) -> Tensor:
        """The variable whose image is x."""
        return self.w0.clone() if self.kind == "tanh" else torch.zeros_like(self.x)

    def image(self, w: Tensor, idx: Tensor) -> Tensor:
        """x' for the rows ``idx`` of the batch (w holds only those rows)."""
        if self.kind == "tanh":
            return clip_box(self.x[idx] + 0.5 * (torch.tanh(w) - self.t0[idx]))
        return clip_box(self.x[idx] + w)

    def project(self, w: Tensor, idx: Tensor) -> Tensor:
        """After a step: keep pixel-space perturbations inside the box."""
        if self.kind == "tanh":
            return w
        return clip_box(self.x[idx] + w) - self.x[idx]


class CWSettings(Settings):
    """The C&W family's settings, written once: confidence kappa >= 0, the first constant
    c0 > 0, Adam's steps >= 1 and lr > 0, the box ("clip" or "tanh", see the module
    docstring) and its tanh shrink."""

    confidence: float = 0.0
    c0: float = 1e-2
    steps: int = 100
    lr: float = 1e-2
    box: str = "clip"
    tanh_eps: float = 1e-6
    seed: int = 0

    def check(self) -> None:
        at_least(0, confidence=self.confidence)
        positive(c0=self.c0, lr=self.lr)
        at_least(1, steps=self.steps)
        one_of("box", self.box, BOXES)


class CWL2Settings(CWSettings):
    """:class:`CWSettings` and the search over c: search_steps >= 1, abort_early."""

    search_steps: int = 9
    abort_early: bool = True

    def check(self) -> None:
        super().check()
        at_least(1, search_steps=self.search_steps)


class CWLinfSettings(CWSettings):
    """:class:`CWSettings` and tau's schedule: 0 < decrease < 1, c0 <= max_c, min_tau,
    max_rounds >= 1."""

    max_c: float = 20.0
    decrease: float = 0.9
    min_tau: float = 1 / 256
    max_rounds: int = 40

    def check(self) -> None:
        super().check()
        if not 0 < self.decrease < 1 or self.max_c < self.c0:
            raise ThreatModelError("need 0 < decrease < 1 and c0 <= max_c")
        at_least(1, max_rounds=self.max_rounds)


@register("cw-l2", knowledge="white", goal="both", norm="l2", kind="optimization",
          bounded=False)
class CarliniWagnerL2(Attack):
    r"""Carlini-Wagner L2: :math:`\min \|x' - x\|_2^2 + c\, f(x')` with Adam, and a binary
    search over c per example, keeping the smallest successful perturbation.

    Per search step every example restarts from x, runs up to ``steps`` Adam steps, and stops
    early when its loss has not decreased by 0.01% over ``steps // 10`` steps (the paper's
    early abort, per example: stopped examples leave the batch). Then c is halved towards the
    last success, or multiplied by 10 until the first one (the paper's schedule).

    Args:
        confidence: kappa, the margin required in the logits (0: the decision boundary).
        c0: the initial constant c.
        search_steps: binary-search steps over c (9 in the paper).
        steps: Adam steps per search step (the paper allows up to 10,000 with early abort).
        lr: Adam's learning rate (in w for ``box="tanh"``, in pixels for ``box="clip"``).
        box: "clip" (projected Adam in pixel space) or "tanh" (the paper's change of
            variables); see the module docstring.
        tanh_eps: shrink of the tanh change of variables (1e-6 as the paper's code).
        abort_early: stop an example whose loss stalls.
        seed: unused (the attack is deterministic); kept for the common interface.

    Returns (``info``): "c", the constant of each example's best result (nan if none).

    References: Carlini & Wagner, IEEE S&P 2017, arXiv:1608.04644.
    """

    Settings = CWL2Settings
    positional = ()
    norm = "l2"

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        box = Box(self.box, x, self.tanh_eps)
        search = ConstantSearch.start(self.c0, len(x), x)
        best = Best.start(x)
        best_c = torch.full_like(search.c, math.nan)
        with torch.no_grad():  # already adversarial: x itself is the smallest perturbation
            done = cw_success(model(x), y, target, self.confidence)
        best.norm[done] = 0.0
        todo = (~done).nonzero().squeeze(1)
        for _ in range(self.search_steps):
            if len(todo) == 0:
                break
            found = self._descend(model, box, y, target, search.c, best, best_c, todo)
            search.update(found)
        return Crafted(confirm(model, x, best.x, y, target, best.found), info={"c": best_c})

    def _descend(self, model: Model, box: Box, y: Tensor, target: Tensor | None, c: Tensor,
                 best: Best, best_c: Tensor, idx: Tensor) -> Tensor:
        """One search step at constants c for the rows idx: Adam from x; updates the bests
        in place.

        Returns: bool (N,), whether an adversarial iterate was found at this c.
        """
        x = box.x
        w = box.start()
        opt = RowAdam.like(w, self.lr)
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        prev = torch.full_like(c, math.inf)
        check_every = max(1, self.steps // 10)
        for step in range(self.steps):
            ws = w[idx].requires_grad_(True)
            xs = box.image(ws, idx)
            logits = model(xs)
            l2sq = (xs - x[idx]).flatten(1).pow(2).sum(1)
            ts = None if target is None else target[idx]
            loss = l2sq + c[idx] * cw_margin(logits, y[idx], ts, self.confidence)
            (g,) = torch.autograd.grad(loss.sum(), ws)
            with torch.no_grad():
                ok = cw_success(logits, y[idx], ts, self.confidence)
                found[idx] |= ok
                better = best.update(idx, xs, l2sq.sqrt(), ok)
                best_c[better] = c[better]
                w[idx] = box.project(opt.step(ws.detach(), g, idx), idx)
                if self.abort_early and (step + 1) % check_every == 0:
                    idx = still_improving(loss, prev, idx)
                    if len(idx) == 0:
                        break
        return found


@register("cw-linf", knowledge="white", goal="both", norm="linf", kind="optimization",
          bounded=False)
class CarliniWagnerLinf(Attack):
    r"""Carlini-Wagner Linf, the paper's iterative tau reduction, batched per example.

    The Linf distance is replaced by a penalty on the pixels above a threshold tau,

    .. math::  \min_{x'}\ c\, f(x') + \sum_i \max(|x'_i - x_i| - \tau, 0),

    solved with Adam, warm-started from the previous solution. When a solve succeeds (the
    example is adversarial and no pixel exceeds tau), tau becomes 0.9 times the Linf norm
    reached; when it fails, c doubles (up to ``max_c``) and the next solve goes on from the
    failed solve's last iterate (the paper's code restarts from the last success, which with
    few steps per solve can leave an example stuck at x: Adam's steps do not grow with c).
    An example stops when c exceeds ``max_c`` (its last success is returned) or tau falls
    below ``min_tau``. All examples run
    in lock-step rounds, each with its own tau and c.

    Args:
        confidence: kappa of the margin loss.
        c0: initial c (the paper's code uses 1e-5; a larger start saves rounds of doubling).
        max_c: largest c tried (the paper's 20).
        steps: Adam steps per solve (1,000 in the paper's code); a solve stops as soon as the
            example is adversarial within tau. On mnist-cnn, 30 steps from c0 = 0.1 reach
            about the Linf of 100 steps from c0 = 0.01 (same mean, median a few percent
            larger) at under a quarter of the model evaluations
            (benchmarks/results/whitebox_minnorm-cw-linf-mnist-cnn.json).
        lr: Adam's learning rate (5e-3 in the paper's code).
        decrease: factor applied to tau after a success (0.9).
        min_tau: stop when tau falls below this (1/256 in the paper).
        max_rounds: cap on the number of solves per example.
        box: "clip" or "tanh", as for :class:`CarliniWagnerL2`.
        tanh_eps: shrink of the tanh change of variables.
        seed: unused (deterministic).

    References: Carlini & Wagner, IEEE S&P 2017, arXiv:1608.04644 (Section V, the Linf
    attack).
    """

    Settings = CWLinfSettings
    positional = ()
    preset = {"c0": 0.1, "steps": 30, "lr": 5e-3}
    norm = "linf"

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        box = Box(self.box, x, self.tanh_eps)
        w = box.start()
        n = len(x)
        tau = torch.ones(n, dtype=x.dtype, device=x.device)
        c = torch.full_like(tau, self.c0)
        best = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        idx = torch.arange(n, device=x.device)
        for _ in range(self.max_rounds):
            w_new, ok, x_new = self._solve(model, box, w, x, y, target, tau, c, idx)
            with torch.no_grad():
                win, lose = idx[ok], idx[~ok]
                best[win], found[win] = x_new[ok], True
                w[idx] = w_new  # successes restart from their solution, failures go on
                reached = (x_new[ok] - x[win]).flatten(1).abs().amax(1)
                tau[win] = torch.minimum(tau[win], reached) * self.decrease
                c[lose] = c[lose] * 2
                idx = idx[(c[idx] <= self.max_c) & (tau[idx] >= self.min_tau)]
            if len(idx) == 0:
                break
        best = confirm(model, x, best, y, target, found)
        return Crafted(best, info={"tau": tau, "c": c})

    def _solve(self, model: Model, box: Box, w: Tensor, x: Tensor, y: Tensor,
               target: Tensor | None, tau: Tensor, c: Tensor,
               idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Adam on the rows idx from w. Returns, for the rows of idx, w (at the success, or
        the last iterate), success (adversarial and within tau) and the successful image."""
        ws = w[idx].clone()
        out_w, out_x = ws.clone(), box.image(ws, idx)
        done = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
        opt = RowAdam.like(ws, self.lr)
        live = torch.arange(len(idx), device=x.device)  # rows of idx still descending
        ts_all = None if target is None else target[idx]
        for _ in range(self.steps):
            rows = idx[live]
            wl = ws[live].requires_grad_(True)
            xs = box.image(wl, rows)
            logits = model(xs)
            ts = None if ts_all is None else ts_all[live]
            over = ((xs - x[rows]).abs() - broadcast_rows(tau[rows], xs)).clamp_min(0)
            penalty = over.flatten(1).sum(1)
            f = cw_margin(logits, y[rows], ts, self.confidence)
            with torch.no_grad():
                fine = cw_success(logits, y[rows], ts, self.confidence) & (penalty == 0)
            (g,) = torch.autograd.grad((c[rows] * f + penalty).sum(), wl)
            with torch.no_grad():
                hit = live[fine]
                done[hit], out_w[hit], out_x[hit] = True, wl[fine].detach(), xs[fine].detach()
                ws[live] = box.project(opt.step(wl.detach(), g, live), rows)
                live = live[~fine]
            if len(live) == 0:
                break
        out_w[~done] = ws[~done]
        return out_w, done, out_x
