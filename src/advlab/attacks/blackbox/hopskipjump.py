r"""HopSkipJump: a label-only minimum-norm attack that estimates the boundary's normal.

From a verified adversarial point, each iteration t

1. *binary search* back to the boundary between x and the current point (L2: along the blend
   :math:`(1-\alpha) x + \alpha x_t`; Linf: shrinking the clip box), to the tolerance
   :math:`\theta = d^{-3/2}` (L2) or :math:`d^{-2}` (Linf);
2. *gradient-direction estimate* at the boundary point :math:`x_t` by Monte Carlo over
   :math:`B_t = B_0 \sqrt{t}` random unit directions :math:`u_b`:

   .. math::  \widetilde{\nabla S}(x_t, \delta_t) = \frac{1}{B_t - 1} \sum_b
              \big(\phi(x_t + \delta_t u_b) - \bar\phi\big)\, u_b,
              \qquad \delta_t = d\,\theta\,\|x_{t-1} - x\|
              \ (\sqrt{d}\,\theta\,\|\cdot\|_2 \text{ for L2}),\ \delta_1 = 0.1,

   with the baseline :math:`\bar\phi` (the mean decision) subtracted;
3. *geometric step search*: step :math:`\xi_t = \|x_t - x\| / \sqrt{t}` along the estimate
   (its sign for Linf), halved until the point is adversarial again.

Batched over examples: every phase queries only the examples that still have budget; an
example out of queries keeps its last verified adversarial point.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from advlab.attacks.base import AttackResult, Model, register
from advlab.attacks.blackbox.decision import (
    Decision,
    begin,
    bisect,
    blend,
    check_start,
    clip_path,
    distance,
)
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle
from advlab.attacks.settings import Settings, at_least, one_of, positive
from advlab.threat import broadcast_rows, clip_box

ROWS_PER_QUERY = 2 ** 22  # floats per gradient-estimation chunk (memory bound)


class HopSkipJumpSettings(Settings):
    """The settings of :class:`HopSkipJump` (its docstring): norm l2 or linf; steps,
    max_queries, init_evals, max_evals >= 1; gamma > 0; init and init_tries as
    :func:`~advlab.attacks.blackbox.decision.check_start` says."""

    norm: str = "l2"
    steps: int = 40
    max_queries: int = 1_000
    init_evals: int = 100
    max_evals: int = 10_000
    gamma: float = 1.0
    init: str = "noise"
    init_tries: int = 100
    seed: int = 0

    def check(self) -> None:
        one_of("norm", self.norm, ("l2", "linf"))
        at_least(1, steps=self.steps, max_queries=self.max_queries,
                 init_evals=self.init_evals, max_evals=self.max_evals)
        positive(gamma=self.gamma)
        check_start(self.init, self.init_tries)


@register("hopskipjump", knowledge="label", goal="both", norm="l2", kind="iterative",
          bounded=False)
@register("hopskipjump-linf", knowledge="label", goal="both", norm="linf", kind="iterative",
          bounded=False, defaults={"norm": "linf"})
class HopSkipJump(BlackBoxAttack):
    r"""HopSkipJumpAttack (HSJA), L2 or Linf, minimum-norm, targeted or untargeted.

    Args:
        norm: "l2" or "linf".
        steps: iterations (the paper's 40 by default); the budget usually ends the run first.
        max_queries: per-example budget. The default, 1,000, keeps a default evaluation of
            the zoo models short (about 6 iterations); the L2 keeps falling with the budget
            (the paper runs to 25,000; ``python benchmarks/blackbox_label.py --part hsj
            --queries <budget>``, figures in
            benchmarks/results/blackbox_label-hsj-mnist-cnn-<budget>.json).
        init_evals: B_0, directions at the first iteration (100 in the paper).
        max_evals: cap on B_t (10,000 in the paper).
        gamma: tolerance scale, theta = gamma / d^{3/2} (L2) or gamma / d^2 (Linf).
        init: starting points: "noise" (uniform noise, the paper's choice), "batch" (the
            nearest image of the batch already classified adversarially, no extra query) or
            "auto" (batch, then noise). User starting images, e.g. of the target class, go to
            :meth:`__call__` as ``starting_points``.
        init_tries: noise images drawn per example at most.
        seed: seeds the random directions and noise.

    Shape: x N x C x H x W in [0, 1], y (N,); ``AttackResult.queries`` per example,
    ``info["budget_exhausted"]`` (N,) bool.

    References: Chen, Jordan & Wainwright, "HopSkipJumpAttack: a query-efficient
    decision-based attack", IEEE S&P 2020, arXiv:1904.02144.
    """

    Settings = HopSkipJumpSettings
    positional = ()
    access = "labels"
    _starting_points: Tensor | None = None

    def __call__(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None = None, *,
                 eps: float | Tensor | None = None,
                 starting_points: Tensor | None = None) -> AttackResult:
        """Run the attack; ``starting_points`` (N x C x H x W, optional) are adversarial
        images to start from (for a targeted attack: images of the target class). Each is
        verified with one query; where it is not adversarial the usual initialisation runs.
        """
        self._starting_points = starting_points
        try:
            return super().__call__(model, x, y, target, eps=eps)
        finally:
            self._starting_points = None

    # -- the algorithm ----------------------------------------------------------------------

    def theta(self, d: int) -> float:
        """The binary-search tolerance theta."""
        return self.gamma / (d ** 1.5 if self.norm == "l2" else d ** 2)

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        s = begin(oracle, x, y, target, self.init, self.init_tries, generator,
                  self._starting_points, self.norm)
        decide, idx, d, x_adv = s.decide, s.idx, x[0].numel(), x.clone()
        if len(idx) == 0:
            return x_adv
        theta = self.theta(d)
        xs = s.x
        cur, dist = self._to_boundary(decide, xs, s.points, idx, theta)
        dist_post = dist.clone()  # distance before the last binary search (delta_t's scale)
        for t in range(1, self.steps + 1):
            n_t = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            reserve = math.ceil(math.log2(1.0 / theta)) + 3  # a step and a binary search
            budget = oracle.remaining()[idx] - reserve
            evals = torch.clamp(budget, max=n_t)
            live = evals >= min(n_t, 10)
            if not live.any():
                break
            rows = live.nonzero().squeeze(1)
            delta = self._delta(t, d, theta, dist_post[rows], x)
            grad = self._estimate(decide, cur[rows], idx[rows], evals[rows], delta, generator)
            update = grad if self.norm == "l2" else grad.sign()
            stepped, ok = self._geometric(decide, cur[rows], update, dist[rows] / math.sqrt(t),
                                          idx[rows])
            rows, stepped = rows[ok], stepped[ok]
            if len(rows) == 0:
                continue
            dist_post[rows] = distance(xs[rows], stepped, self.norm)
            new, new_dist = self._to_boundary(decide, xs[rows], stepped, idx[rows], theta)
            closer = new_dist < dist[rows]
            cur[rows[closer]], dist[rows[closer]] = new[closer], new_dist[closer]
        x_adv[idx] = cur
        return x_adv

    def _to_boundary(self, decide: Decision, x: Tensor, x_adv: Tensor, idx: Tensor,
                     theta: float) -> tuple[Tensor, Tensor]:
        """Binary search between x and the verified adversarial x_adv; returns the boundary
        point (adversarial side) and its distance to x."""
        if self.norm == "l2":
            high = torch.ones(len(x), device=x.device, dtype=x.dtype)
            tol = torch.full_like(high, theta)
            path = blend(x, x_adv)
        else:
            high = distance(x, x_adv, "linf")
            tol = torch.clamp(high * theta, max=theta)
            path = clip_path(x, x_adv)
        point, _ = bisect(decide, lambda a, r: path(a, r), idx, x_adv, high, tol)
        return point, distance(x, point, self.norm)

    def _delta(self, t: int, d: int, theta: float, dist_post: Tensor, x: Tensor) -> Tensor:
        """The probe radius delta_t: 0.1 first, then d theta ||.|| (sqrt(d) theta for L2)."""
        if t == 1:
            return torch.full_like(dist_post, 0.1)
        scale = math.sqrt(d) * theta if self.norm == "l2" else d * theta
        return scale * dist_post

    def _estimate(self, decide: Decision, cur: Tensor, owner: Tensor, evals: Tensor,
                  delta: Tensor, generator: torch.Generator) -> Tensor:
        r"""Monte-Carlo estimate of the boundary normal at ``cur`` (unit L2 norm per row).

        Accumulates :math:`\sum \phi u`, :math:`\sum u` and :math:`\sum \phi` in chunks, so the
        baseline-subtracted mean :math:`\overline{\phi u} - \bar\phi\,\bar u` needs no
        B_t x d tensor at once.
        """
        k = len(cur)
        flat = cur.flatten(1)
        d = flat.shape[1]
        s_fu, s_u = torch.zeros_like(flat), torch.zeros_like(flat)
        s_f = torch.zeros(k, device=cur.device, dtype=cur.dtype)
        who = torch.repeat_interleave(torch.arange(k, device=cur.device), evals)
        chunk = max(1, ROWS_PER_QUERY // d)
        for lo in range(0, len(who), chunk):
            w = who[lo:lo + chunk]
            if self.norm == "l2":
                u = torch.randn(len(w), d, generator=generator, device=cur.device,
                                dtype=cur.dtype)
            else:
                u = torch.rand(len(w), d, generator=generator, device=cur.device,
                               dtype=cur.dtype) * 2 - 1
            u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
            probe = clip_box(flat[w] + delta[w, None] * u)
            u = (probe - flat[w]) / delta[w, None]
            f = decide(probe.view(len(w), *cur.shape[1:]), owner[w]).to(cur.dtype) * 2 - 1
            s_fu.index_add_(0, w, f[:, None] * u)
            s_u.index_add_(0, w, u)
            s_f.index_add_(0, w, f)
        m = evals.to(cur.dtype)[:, None]
        mean_f = s_f[:, None] / m
        grad = s_fu / m - mean_f * s_u / m
        same = mean_f.abs() == 1  # every probe on one side: the paper uses +-mean(u)
        grad = torch.where(same, mean_f * s_u / m, grad)
        grad = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return grad.view_as(cur)

    def _geometric(self, decide: Decision, cur: Tensor, update: Tensor, xi: Tensor,
                   owner: Tensor, halvings: int = 30) -> tuple[Tensor, Tensor]:
        """Geometric step-size search: xi, xi/2, ... until cur + xi * update is adversarial.

        Returns the accepted (verified adversarial) points and a bool mask of examples that
        found one (the others ran out of budget or halvings)."""
        out = cur.clone()
        ok = torch.zeros(len(cur), dtype=torch.bool, device=cur.device)
        xi = xi.clone()
        for _ in range(halvings):
            rows = (~ok & decide.can_query(owner)).nonzero().squeeze(1)
            if len(rows) == 0:
                break
            cand = clip_box(cur[rows] + broadcast_rows(xi[rows], cur[rows]) * update[rows])
            adv = decide(cand, owner[rows])
            out[rows[adv]] = cand[adv]
            ok[rows[adv]] = True
            xi[rows[~adv]] /= 2
        return out, ok
