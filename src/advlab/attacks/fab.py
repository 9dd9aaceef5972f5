r"""FAB, the Fast Adaptive Boundary attack: minimum-norm adversarial examples by projecting
onto the linearised decision boundary, biased toward the original image.

At the iterate :math:`x^{(i)}`, the boundary between the true class y and a class s is
linearised, :math:`\pi_s = \{z : f_s + \langle w_s, z - x^{(i)} \rangle = 0\}` with
:math:`f_s = Z_s(x^{(i)}) - Z_y(x^{(i)})` and :math:`w_s = \nabla f_s`. FAB takes the closest
one, :math:`s = \arg\min_{k \ne y} |f_k| / \|w_k\|_q` (q the dual norm); FAB-T each of the
most likely other classes in turn (success is untargeted in both). With
:math:`\delta = P_p(x^{(i)}, \pi_s \cap C)` and :math:`\delta_0 = P_p(x_0, \pi_s \cap C)`,
the smallest steps (in the attack's p-norm, inside the box C) from the iterate and from the
original onto that hyperplane,

.. math::  x^{(i+1)} = \Pi_C\big((1 - \alpha)(x^{(i)} + \eta\,\delta)
                       + \alpha\,(x_0 + \eta\,\delta_0)\big), \qquad
           \alpha = \min\Big(\frac{\|\delta\|_p}{\|\delta\|_p + \|\delta_0\|_p},
           \alpha_{max}\Big)

(:math:`\eta` overshoots the boundary). When :math:`x^{(i+1)}` is adversarial it is recorded if
it is the closest so far, and the iterate steps back toward the original,
:math:`x^{(i+1)} \leftarrow x_0 + \beta (x^{(i+1)} - x_0)`, so the search walks along the
boundary toward x0. For a linear classifier the first step lands on the exact minimal
perturbation (times eta).

The projection onto a hyperplane inside the box is exact: the minimiser of :math:`\|d\|_p`
subject to :math:`\langle w, d \rangle = r` and :math:`0 \le p + d \le 1` is
:math:`d_i = s_i \min(t\,m_i, c_i)`, with :math:`s_i = \mathrm{sign}(w_i r)`, :math:`c_i` the
room left in the box along :math:`s_i`, :math:`m_i = 1` (Linf) or :math:`|w_i|` (L2), and the
scalar t solved from the piecewise-linear, non-decreasing :math:`\sum_i |w_i| \min(t m_i, c_i)
= |r|` by sorting its breakpoints.

References: Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
boundary attack", ICML 2020, arXiv:1907.02044. FAB-T in AutoAttack: Croce & Hein, ICML 2020,
arXiv:2003.01690.
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import (
    Attack,
    Crafted,
    Model,
    first_of_each,
    is_success,
    logits_and_grad,
    register,
)
from advlab.attacks.settings import Settings, at_least, one_of
from advlab.errors import ThreatModelError
from advlab.threat import DEFAULT_EPS, broadcast_rows, clip_box, lp_norm

DUAL = {"linf": 1.0, "l2": 2.0}


def _untargeted(attack: Attack, target: Tensor | None) -> None:
    if target is not None:
        raise ThreatModelError(f"{type(attack).__name__} is untargeted (FAB-T's targets only "
                               "choose the boundaries it follows); use cw-l2, apgd-t or jsma "
                               "for a targeted attack")


def _gap(z: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """Z_t - Z_y per row."""
    return (z.gather(1, t[:, None]) - z.gather(1, y[:, None])).squeeze(1)


def plane_step(w: Tensor, r: Tensor, p: Tensor, norm: str) -> Tensor:
    """The smallest d (in ``norm``) with <w, d> = r and p + d in [0, 1], row by row.

    Args:
        w: normals, N x D.  r: right-hand sides, (N,).  p: points, N x D in [0, 1].
        norm: "linf" or "l2".

    Where the box makes the hyperplane unreachable, d goes as far as the box allows.
    """
    s = torch.sign(w) * torch.sign(r)[:, None]  # the direction each coordinate moves
    a = w.abs()
    room = torch.where(s > 0, 1 - p, p)  # how far each coordinate can move along s
    m = None if norm == "linf" else a
    t = _saturation_root(a, room, m, r.abs())
    return s * torch.minimum(t[:, None] if m is None else t[:, None] * m, room)


def _saturation_root(a: Tensor, room: Tensor, m: Tensor | None, need: Tensor) -> Tensor:
    r"""Per row, the t >= 0 where :math:`h(t) = \sum_i a_i \min(t\,m_i, c_i)` reaches
    ``need`` (m = None: all m_i = 1; c = ``room``), or one where every coordinate with
    :math:`a_i m_i > 0` is saturated when h never does.

    h is concave and piecewise linear, so Newton's method from t = 0 climbs to the root from
    below and stops exactly there as soon as a step crosses no breakpoint (its slope,
    :math:`\sum_{t m_i < c_i} a_i m_i`, unchanged): at most one step per breakpoint, two or
    three on FAB's iterates, each a few passes over the rows still moving (sorting the
    breakpoints costs about twice as much).
    """
    am = a if m is None else a * m
    slope = (am * (room > 0)).sum(1)  # h's slope at t = 0
    t, h = torch.zeros_like(need), torch.zeros_like(need)
    rows, here, moving = torch.arange(len(need), device=need.device), t, slope > 0
    while True:
        if not moving.all():  # keep the rows still moving (no copies while all are)
            rows, a, room, am, need, here, h, slope = (v[moving] for v in (
                rows, a, room, am, need, here, h, slope))
            m = None if m is None else m[moving]
        if len(rows) == 0:
            break
        here = here + ((need - h) / slope).clamp_min(0)
        low = torch.minimum(here[:, None] if m is None else here[:, None] * m, room)
        h = (a * low).sum(1)
        new_slope = (am * (low < room)).sum(1)  # low < room exactly where t m_i < c_i
        t[rows] = here
        moving, slope = (new_slope != slope) & (new_slope > 0), new_slope
    return t


class FABSettings(Settings):
    """The settings of :class:`FAB` (its docstring): norm linf or l2, steps and restarts
    >= 1, 0 <= alpha_max <= 1, eta >= 1, 0 < beta <= 1."""

    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    seed: int = 0

    def check(self) -> None:
        one_of("norm", self.norm, tuple(DUAL))
        at_least(1, steps=self.steps, restarts=self.restarts, eta=self.eta)
        if not (0 <= self.alpha_max <= 1 and 0 < self.beta <= 1):
            raise ThreatModelError(f"FAB needs 0 <= alpha_max <= 1 and 0 < beta <= 1, got "
                                   f"{self.alpha_max}, {self.beta}")


class FABTSettings(FABSettings):
    """:class:`FABSettings` and the ball: eps >= 0 (default: the norm's,
    :data:`advlab.threat.DEFAULT_EPS`), n_targets >= 1."""

    eps: float | None = None
    n_targets: int = 9

    def check(self) -> None:
        super().check()
        if self.eps is None:
            self.resolve("eps", DEFAULT_EPS[self.norm])
        at_least(0, eps=self.eps)
        at_least(1, n_targets=self.n_targets)


@register("fab", knowledge="white", goal="untargeted", norm="linf", kind="iterative",
          bounded=False)
@register("fab-l2", knowledge="white", goal="untargeted", norm="l2", kind="iterative",
          bounded=False, defaults={"norm": "l2"})
class FAB(Attack):
    """FAB, minimum-norm and untargeted, Linf or L2: the closest linearised boundary.

    Args:
        norm: "linf" or "l2".
        steps: iterations per run (100, as in AutoAttack).
        restarts: runs; after the first, each starts from a random point of the ball of half
            the best norm found so far (the paper's restarts; half the default eps while none
            is found).
        alpha_max: the largest weight of the step from the original (0.1).
        eta: overshoot of each projection (1.05).
        beta: step back toward the original after an adversarial iterate (0.9).
        seed: seeds the restarts.

    Returns (``info``): "norm", the norm of the closest adversarial example found per example
    (inf where none was found; the output is then x).

    References: Croce & Hein, ICML 2020, arXiv:1907.02044.
    """

    Settings = FABSettings
    positional = ()

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        _untargeted(self, target)
        best, dist = self.search(model, x, y, None, generator)
        return Crafted(best, info={"norm": dist})

    # -- the search ------------------------------------------------------------------------

    def search(self, model: Model, x: Tensor, y: Tensor, towards: Tensor | None,
               generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The closest adversarial example found over the restarts, and its norm (inf: none).

        ``towards``: the class t whose boundary with y is followed (None: the closest class).
        Success is any class but y, as in the paper.
        """
        with torch.no_grad():
            done = is_success(model(x), y, None)
        best = x.clone()
        dist = torch.where(done, 0.0, float("inf")).to(x.dtype)
        for r in range(self.restarts):
            todo = (~done).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            start = x[todo]
            if r > 0:
                radius = torch.where(dist[todo].isfinite(), dist[todo],
                                     DEFAULT_EPS[self.norm]) / 2
                start = clip_box(start + self.ball.random(start, radius, generator))
            t = None if towards is None else towards[todo]
            run_best, run_dist = self._run(model, x[todo], y[todo], t, start)
            better = run_dist < dist[todo]
            best[todo[better]] = run_best[better]
            dist[todo[better]] = run_dist[better]
        return best, dist

    def _run(self, model: Model, x0: Tensor, y: Tensor, towards: Tensor | None,
             start: Tensor, stop: Tensor | None = None,
             owner: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One run per row from ``start``: the closest adversarial point found and its norm.

        ``stop`` (R,) and ``owner`` (R,): once a row finds an adversarial point within
        ``stop``, every row of the same example (``owner``) stops."""
        best = x0.clone()
        dist = torch.full((len(x0),), float("inf"), dtype=x0.dtype, device=x0.device)
        act = torch.arange(len(x0), device=x0.device)  # the rows still running
        x = start.clone()
        for _ in range(self.steps):
            if len(act) == 0:
                break
            xa0, ya = x0[act], y[act]
            f, w = self._boundary(model, x, ya, None if towards is None else towards[act])
            flat, flat0 = x.flatten(1), xa0.flatten(1)
            d = plane_step(w, -f, flat, self.norm)  # from the iterate onto the hyperplane
            d0 = plane_step(w, -(f + (w * (flat0 - flat)).sum(1)), flat0, self.norm)  # from x0
            n, n0 = lp_norm(d, self.norm), lp_norm(d0, self.norm)
            alpha = (n / (n + n0).clamp_min(1e-12)).clamp(0, self.alpha_max)[:, None]
            new = ((1 - alpha) * (flat + self.eta * d) + alpha * (flat0 + self.eta * d0))
            x = clip_box(new).view_as(xa0)
            with torch.no_grad():
                adv = is_success(model(x), ya, None)
            gap = lp_norm(x - xa0, self.norm)
            closer = adv & (gap < dist[act])
            best[act[closer]], dist[act[closer]] = x[closer], gap[closer]
            x = torch.where(broadcast_rows(adv, x), xa0 + self.beta * (x - xa0), x)
            if stop is not None and owner is not None and closer.any():
                done = torch.zeros(int(owner.max()) + 1, dtype=torch.bool, device=x.device)
                done[owner[act][dist[act] <= stop[act]]] = True
                keep = ~done[owner[act]]
                act, x = act[keep], x[keep]
        return best, dist

    def _boundary(self, model: Model, x: Tensor, y: Tensor, towards: Tensor | None
                  ) -> tuple[Tensor, Tensor]:
        """f (N,) and w = grad f (N x D) of the linearised boundary to follow at x.

        Toward a class t: f = Z_t - Z_y. Otherwise f_k = Z_k - Z_y for the class minimising
        |f_k| / ||w_k||_q (one backward pass per class)."""
        if towards is not None:
            z, w = logits_and_grad(model, x, lambda z, rows: _gap(z, y[rows], towards[rows]))
            return _gap(z, y, towards), w.flatten(1)
        x = x.detach().requires_grad_(True)
        z = model(x)
        k = z.shape[1]
        jac = torch.stack([torch.autograd.grad(z[:, c].sum(), x, retain_graph=c < k - 1)[0]
                           .flatten(1) for c in range(k)], 1)  # N x K x D
        rows = torch.arange(len(x), device=x.device)
        fs = (z - z.gather(1, y[:, None])).detach()
        ws = jac - jac[rows, y][:, None]
        score = fs.abs() / ws.norm(p=DUAL[self.norm], dim=2).clamp_min(1e-12)
        s = score.scatter(1, y[:, None], float("inf")).argmin(1)
        return fs[rows, s], ws[rows, s]


@register("fab-t", knowledge="white", goal="untargeted", norm="linf", kind="iterative")
@register("fab-t-l2", knowledge="white", goal="untargeted", norm="l2", kind="iterative",
          defaults={"norm": "l2"})
class FABT(FAB):
    """FAB-T, the AutoAttack member: FAB along the boundary to each of the ``n_targets``
    classes with the highest clean logits, on the examples not yet fooled within eps.

    The targets run side by side, one row per (example, target), and all rows of an example
    stop as soon as one of them finds an adversarial point within eps (the paper runs the
    targets one after another on the examples still robust: the same runs, in batches nine
    times smaller).

    Success is untargeted (any class but y): the targets only choose the boundaries to
    follow. The output is an adversarial example of norm at most eps (the first row to find
    one stops its example), else x; ``info["norm"]`` is its norm, or the smallest norm found
    (inf: none) for an example not fooled within eps.

    Args:
        eps: radius; default 0.3 (linf) or 2.0 (l2).
        n_targets: classes tried (9 in AutoAttack, capped at K - 1).
        (others as :class:`FAB`)

    References: Croce & Hein, ICML 2020, arXiv:2003.01690 (AutoAttack), arXiv:1907.02044.
    """

    Settings = FABTSettings
    positional = ("eps",)

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        assert eps is not None
        _untargeted(self, target)
        with torch.no_grad():
            logits = model(x)
        done = is_success(logits, y, None)
        k = min(self.n_targets, logits.shape[1] - 1)
        ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
        best, dist = x.clone(), torch.where(done, 0.0, float("inf")).to(x.dtype)
        for r in range(self.restarts):
            todo = (dist > eps).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            owner = todo.repeat(k)  # one row per (example, target)
            t = ranked[owner, torch.arange(k, device=x.device).repeat_interleave(len(todo))]
            start = x[owner]
            if r > 0:
                radius = torch.where(dist[owner].isfinite(), dist[owner], eps[owner]) / 2
                start = clip_box(start + self.ball.random(start, radius, generator))
            b, d = self._run(model, x[owner], y[owner], t, start, eps[owner], owner)
            run_dist = torch.full_like(dist, float("inf")).scatter_reduce_(0, owner, d, "amin")
            rows = first_of_each(owner, d == run_dist[owner])
            better = run_dist[owner[rows]] < dist[owner[rows]]
            rows = rows[better]
            best[owner[rows]], dist[owner[rows]] = b[rows], d[rows]
        inside = dist <= eps
        return Crafted(torch.where(broadcast_rows(inside, x), best, x), info={"norm": dist})
