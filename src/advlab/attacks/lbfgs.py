r"""The L-BFGS attack of Szegedy et al., the lecture's first adversarial examples.

Targeted: for each example, with :math:`x' = \mathrm{clip}_{[0,1]}(x + \Pi_\epsilon(r))`,

.. math::  r^*(c) = \arg\min_r\ \mathcal{L}(f(x'), t_{adv}) + c\, \|x' - x\|_2^2

(cross-entropy of the target plus an L2 penalty; the lecture's slide), solved by L-BFGS run
per example in one batch: each example has its own curvature history (two-loop recursion)
and its own backtracking line search, so no example's step depends on another's. The box is kept
by clipping inside the objective (a projected variant of the paper's box-constrained
L-BFGS-B): coordinates pushed outside [0, 1] have zero gradient there and are clipped in the
output. With ``eps`` the perturbation is also projected onto the eps-ball of ``norm``
(the lecture's :math:`|r_i| < \epsilon` for ``norm="linf"``).

A search over c per example then looks for the *largest* c whose minimiser still reaches the
target (the strongest penalty, hence the smallest perturbation; the paper's "minimum c"
weights the loss instead): c is multiplied or divided by 10 until it brackets the boundary,
then bisected geometrically. Each value of c starts from the previous minimiser (warm
start). The smallest successful perturbation is kept.

References: Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow & Fergus, "Intriguing
properties of neural networks", ICLR 2014, arXiv:1312.6199.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, is_success, register
from advlab.attacks.minnorm import Best, ConstantSearch, confirm
from advlab.attacks.settings import TargetedSettings, at_least, one_of, positive
from advlab.threat import ball, clip_box


class LBFGSSettings(TargetedSettings):
    """The settings of :class:`LBFGS` (its docstring): eps >= 0 or None, norm l2 or linf,
    c0 > 0, search_steps, max_iter and history >= 1."""

    eps: float | None = None
    norm: str = "l2"
    c0: float = 1.0
    search_steps: int = 8
    max_iter: int = 10
    history: int = 10
    tol: float = 1e-5
    warm_start: bool = True
    seed: int = 0

    def check(self) -> None:
        super().check()
        one_of("norm", self.norm, ("l2", "linf"))
        positive(c0=self.c0)
        at_least(1, search_steps=self.search_steps, max_iter=self.max_iter,
                 history=self.history)
        at_least(0, eps=self.eps)


@register("lbfgs", knowledge="white", goal="targeted", norm="l2", kind="optimization",
          bounded=False)
class LBFGS(Attack):
    """Szegedy et al.'s L-BFGS attack, batched, with a per-example search over c.

    Args:
        eps: optional bound on the perturbation (None: minimum-norm).
        norm: the norm of the eps bound, "l2" or "linf" (the penalty is always L2 squared).
        c0: the initial penalty weight c.
        search_steps: number of values of c tried per example.
        max_iter: L-BFGS iterations per value of c.
        history: L-BFGS memory.
        tol: an example stops its L-BFGS run when one iteration lowers its objective by less
            than ``tol * (1 + |objective|)``.
        target_selection: how the base picks a target when none is given.
        warm_start: start each value of c from the previous minimiser instead of r = 0
            (on mnist-cnn, aimed at DeepFool's class, 10 iterations warm find a smaller L2
            than 10 cold at the same cost and about that of 20 cold at 0.6 of their cost:
            benchmarks/results/whitebox_minnorm-lbfgs-warm-mnist-cnn.json).
        seed: seeds the random target selection.

    Returns (``info``): "c", each example's largest successful c (nan if none).

    References: Szegedy et al., ICLR 2014, arXiv:1312.6199.
    """

    targeted_only = True

    Settings = LBFGSSettings
    positional = ()

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        assert target is not None  # targeted_only: the base chose one
        with torch.no_grad():  # already classified as the target: x is the answer
            todo = (~is_success(model(x), y, target)).nonzero().squeeze(1)
        best = x.clone()
        c_best = torch.full((len(x),), math.nan, dtype=x.dtype, device=x.device)
        if len(todo) > 0:
            e = None if eps is None else eps[todo]
            best[todo], c_best[todo] = self._search(model, x[todo], y[todo], target[todo], e)
        return Crafted(best, info={"c": c_best})

    def _search(self, model: Model, x: Tensor, y: Tensor, target: Tensor,
                eps: Tensor | None) -> tuple[Tensor, Tensor]:
        """The search over c; returns the best images and their c (nan where none hit)."""
        search = ConstantSearch.start(self.c0, len(x), x, up_on_success=True, geometric=True)
        best = Best.start(x)
        r = torch.zeros_like(x)
        for _ in range(self.search_steps):
            x_new, r_new = self._minimise(model, x, target, search.c, eps, r)
            if self.warm_start:
                r = r_new
            with torch.no_grad():
                hit = is_success(model(x_new), y, target)
                l2 = (x_new - x).flatten(1).norm(dim=1)
                best.update(torch.arange(len(x), device=x.device), x_new, l2, hit)
                search.update(hit)
        found = best.found
        return confirm(model, x, best.x, y, target, found), \
            torch.where(found, search.lo, math.nan)

    def image(self, x: Tensor, r: Tensor, eps: Tensor | None) -> Tensor:
        """x' = clip(x + r), r projected onto the eps-ball first when there is one."""
        if eps is not None:
            r = ball(self.norm).project(r, eps)
        return clip_box(x + r)

    def _objective(self, model: Model, x: Tensor, target: Tensor, c: Tensor,
                   eps: Tensor | None, r: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example CE(f(x'), t) + c ||x' - x||^2 and its gradient in r (flattened)."""
        r = r.detach().requires_grad_(True)
        xa = self.image(x, r, eps)
        loss = F.cross_entropy(model(xa), target, reduction="none") + \
            c * (xa - x).flatten(1).pow(2).sum(1)
        (g,) = torch.autograd.grad(loss.sum(), r)
        return loss.detach(), g.flatten(1)

    def _minimise(self, model: Model, x: Tensor, target: Tensor, c: Tensor,
                  eps: Tensor | None, r0: Tensor) -> tuple[Tensor, Tensor]:
        """L-BFGS per example (own history and backtracking line search) from r = r0.

        Returns the image x' and r after ``max_iter`` iterations (an example stops early where
        its line search finds no decrease, or the decrease is below ``tol`` relative).
        """
        n, shape = len(x), x.shape
        r = r0.flatten(1).clone()
        value = lambda rows, rr: self._objective(  # noqa: E731
            model, x[rows], target[rows], c[rows], None if eps is None else eps[rows],
            rr.view(-1, *shape[1:]))
        rows = torch.arange(n, device=x.device)
        f, g = value(rows, r)
        mem = History(n, r.shape[1], self.history, r)
        for it in range(self.max_iter):
            d = -mem.apply(g[rows], rows)
            slope = (g[rows] * d).sum(1)
            uphill = slope >= 0  # not a descent direction: fall back to -g
            d[uphill], slope[uphill] = -g[rows][uphill], -g[rows][uphill].pow(2).sum(1)
            first = 1.0 / g[rows].abs().sum(1).clamp_min(1.0) if it == 0 else None
            moved, r_new, f_new, g_new = self._line_search(value, rows, r, f, d, slope, first)
            done = rows[moved]
            mem.push(done, r_new[moved] - r[done], g_new[moved] - g[done])
            gain = f[done] - f_new[moved]
            r[done], f[done], g[done] = r_new[moved], f_new[moved], g_new[moved]
            rows = done[gain > self.tol * (1 + f[done].abs())]  # converged rows stop
            if len(rows) == 0:
                break
        r = r.view(shape)
        return self.image(x, r, eps), r

    @staticmethod
    def _line_search(value, rows: Tensor, r: Tensor, f: Tensor, d: Tensor, slope: Tensor,
                     first: Tensor | None, tries: int = 10
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Backtracking (Armijo, c1 = 1e-4) from step 1 (or ``first``), per example; a
        rejected step is replaced by the minimiser of the quadratic interpolation, within
        [0.1, 0.5] of it (Nocedal & Wright, section 3.5).

        Returns, for the rows: accepted (bool), new r, f and gradient (valid where accepted).
        """
        t = torch.ones_like(slope) if first is None else first
        ok = torch.zeros(len(rows), dtype=torch.bool, device=r.device)
        r_new, f_new, g_new = r[rows].clone(), f[rows].clone(), torch.zeros_like(d)
        todo = torch.arange(len(rows), device=r.device)
        for _ in range(tries):
            cand = r[rows[todo]] + t[todo, None] * d[todo]
            fc, gc = value(rows[todo], cand)
            good = fc <= f[rows[todo]] + 1e-4 * t[todo] * slope[todo]
            acc = todo[good]
            ok[acc], r_new[acc], f_new[acc], g_new[acc] = True, cand[good], fc[good], gc[good]
            bad, todo = ~good, todo[~good]
            if len(todo) == 0:
                break
            # minimiser of the quadratic through f, slope and fc, kept in [0.1 t, 0.5 t]
            tt, sl = t[todo], slope[todo]
            curv = fc[bad] - f[rows[todo]] - sl * tt
            t[todo] = (-sl * tt * tt / (2 * curv.clamp_min(1e-30))).clamp(0.1 * tt, 0.5 * tt)
        return ok, r_new, f_new, g_new


class History:
    """The L-BFGS memory of each example: the last m pairs s = r' - r, y = g' - g, and the
    two-loop recursion applying the inverse-Hessian estimate (Nocedal & Wright, Alg. 7.4).

    Pairs with s.y <= 0 are not stored (as in torch.optim.LBFGS); empty slots have rho = 0,
    which makes them no-ops.
    """

    def __init__(self, n: int, d: int, m: int, like: Tensor) -> None:
        self.s = like.new_zeros(n, m, d)
        self.y = like.new_zeros(n, m, d)
        self.rho = like.new_zeros(n, m)
        self.count = torch.zeros(n, dtype=torch.int64, device=like.device)
        self.m = m

    def push(self, rows: Tensor, s: Tensor, y: Tensor) -> None:
        """Store each row's new pair, unless its curvature s.y is not positive."""
        sy = (s * y).sum(1)
        keep = sy > 1e-10
        rows, s, y, sy = rows[keep], s[keep], y[keep], sy[keep]
        slot = self.count[rows] % self.m
        self.s[rows, slot], self.y[rows, slot], self.rho[rows, slot] = s, y, 1 / sy
        self.count[rows] += 1

    def apply(self, g: Tensor, rows: Tensor) -> Tensor:
        """H g for the rows (H = identity times the last s.y / y.y when there is history)."""
        s, y, rho, count = self.s[rows], self.y[rows], self.rho[rows], self.count[rows]
        i = torch.arange(len(rows), device=g.device)
        order = [(count - 1 - k) % self.m for k in range(min(self.m, int(count.max())))]
        q, a = g.clone(), []
        for j in order:  # newest to oldest
            aj = rho[i, j] * (s[i, j] * q).sum(1)
            q -= aj[:, None] * y[i, j]
            a.append(aj)
        if order:
            j = order[0]
            yy = y[i, j].pow(2).sum(1)
            gamma = torch.where((rho[i, j] > 0) & (yy > 0), 1 / (rho[i, j] * yy).clamp_min(1e-30),
                                torch.ones_like(yy))
            q = q * gamma[:, None]
        for j, aj in zip(reversed(order), reversed(a)):  # oldest to newest
            b = rho[i, j] * (y[i, j] * q).sum(1)
            q += (aj - b)[:, None] * s[i, j]
        return q
