r"""Sign-OPT: a label-only L2 attack that optimises the direction to the decision boundary.

OPT's reformulation: for a unit direction :math:`\theta`, the distance to the boundary along it

.. math::  g(\theta) = \min\{\lambda > 0 : x + \lambda\theta \text{ is adversarial}\}

is found by a line search from labels alone, and the attack minimises g over :math:`\theta`.
Sign-OPT estimates the gradient of g from the *sign* of
:math:`g(\theta + \beta u) - g(\theta)`, which costs one query: :math:`x + g(\theta)
\hat\theta'` (:math:`\hat\theta'` the normalised :math:`\theta + \beta u`) is adversarial
exactly when :math:`g(\hat\theta') \le g(\theta)`. Over Q Gaussian unit directions

.. math::  \hat\nabla g(\theta) = \frac{1}{Q} \sum_{q=1}^{Q}
           \mathrm{sign}\big(g(\theta + \beta u_q) - g(\theta)\big)\, u_q,

and each iteration steps :math:`\theta \leftarrow \theta - \alpha \hat\nabla g`
(normalised), with the authors' step search: :math:`\alpha` doubles while g keeps falling,
else shrinks by 4 until g falls (up to 15 tries each); when :math:`\alpha < 10^{-4}`,
:math:`\alpha \leftarrow 1` and :math:`\beta \leftarrow \beta / 10`. Each g comes from the
local search: from the last g, multiply by 1.01 until adversarial or by 0.99 while
adversarial, then bisect to :math:`\beta / 500`. Queries are clipped to [0, 1]; the starting
direction points to a verified adversarial start (the batch's nearest adversarial image, or
noise, as in HopSkipJump).

References: Cheng, Singh, Chen, Chen, Liu & Hsieh, "Sign-OPT: a query-efficient hard-label
adversarial attack", ICLR 2020, arXiv:1909.10773; Cheng, Le, Chen, Yi, Zhang & Hsieh,
"Query-efficient hard-label black-box attack: an optimization-based approach" (OPT), ICLR
2019, arXiv:1807.04457.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from advlab.attacks.base import register
from advlab.attacks.blackbox.decision import Decision, begin, check_start
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle
from advlab.attacks.settings import Settings, at_least, positive
from advlab.threat import broadcast_rows, clip_box

TRIES = 15  # step sizes tried per search phase (the authors' code)


def unit(v: Tensor) -> Tensor:
    """Rows of v scaled to unit L2 norm."""
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (v.dim() - 1))


def along(x: Tensor, theta: Tensor, lam: Tensor) -> Tensor:
    r"""The query points :math:`\mathrm{clip}_{[0,1]}(x + \lambda \theta)`."""
    return clip_box(x + broadcast_rows(lam, x) * theta)


def sign_grad(decide: Decision, x: Tensor, theta: Tensor, g: Tensor, beta: Tensor, q: int,
              owner: Tensor, generator: torch.Generator) -> Tensor:
    r"""Sign-OPT's estimate :math:`\hat\nabla g(\theta)` (Q queries per row), rows K x ...

    The sign of probe u is -1 where :math:`x + g\,\hat\theta'` is adversarial, else +1.
    """
    total = torch.zeros_like(theta)
    for _ in range(q):
        u = unit(torch.randn(theta.shape, generator=generator, device=x.device,
                             dtype=x.dtype))
        probe = unit(theta + broadcast_rows(beta, theta) * u)
        adv = decide(along(x, probe, g), owner)
        total += broadcast_rows(1.0 - 2.0 * adv.to(x.dtype), u) * u
    return total / q


def local_search(decide: Decision, x: Tensor, theta: Tensor, lam: Tensor, tol: Tensor,
                 owner: Tensor, limit: float) -> Tensor:
    r"""g(theta) near ``lam``: the smallest adversarial :math:`\lambda` found, to ``tol``.

    Grows :math:`\lambda` by 1.01 until adversarial (giving up above ``limit``) or shrinks it
    by 0.99 while adversarial, then bisects. Returns (K,) verified values, inf where none was
    found or the budget ran out.
    """
    def budget() -> Tensor:  # one query left for :func:`confirm`
        return decide.can_query(owner, 2)

    def ask(lam_: Tensor, rows: Tensor) -> Tensor:
        if len(rows) == 0:
            return torch.zeros(0, dtype=torch.bool, device=x.device)
        return decide(along(x[rows], theta[rows], lam_), owner[rows])

    k = len(x)
    all_rows = torch.arange(k, device=x.device)
    hi = torch.full_like(lam, math.inf)
    lo = lam.clone()
    rows = all_rows[budget()]
    adv = ask(lam[rows], rows)
    hi[rows[adv]], lo[rows[adv]] = lam[rows[adv]], lam[rows[adv]] * 0.99
    grow = torch.zeros(k, dtype=torch.bool, device=x.device)
    grow[rows[~adv]] = True
    shrink = torch.zeros_like(grow)
    shrink[rows[adv]] = True
    step = lam * 1.01
    while True:
        live = budget()  # an example out of queries stops: hi stays inf if never verified
        grow, shrink = grow & live, shrink & live
        rows = all_rows[grow | shrink]
        if len(rows) == 0:
            break
        cand = torch.where(grow[rows], step[rows], lo[rows])
        adv = ask(cand, rows)
        g_rows, s_rows = grow[rows], shrink[rows]
        found, more = rows[g_rows & adv], rows[g_rows & ~adv]
        hi[found], grow[found] = step[found], False
        lo[more], step[more] = step[more], step[more] * 1.01
        grow[more[step[more] > limit]] = False
        moved, stop = rows[s_rows & adv], rows[s_rows & ~adv]
        hi[moved], lo[moved] = lo[moved], lo[moved] * 0.99
        shrink[stop] = False
    while True:
        rows = all_rows[(hi - lo > tol) & hi.isfinite() & budget()]
        if len(rows) == 0:
            return hi
        mid = (lo[rows] + hi[rows]) / 2
        adv = ask(mid, rows)
        hi[rows[adv]], lo[rows[~adv]] = mid[adv], mid[~adv]


def confirm(decide: Decision, x: Tensor, x_adv: Tensor, idx: Tensor) -> Tensor:
    """Re-query the points of ``idx`` in one batch (the searches leave each example one
    query for it): a point found adversarial in a smaller batch but not here (a margin within
    float rounding of 0) gets its perturbation lengthened by 0.1%, 0.2%, 0.4%, ... and is
    queried again while the budget lasts."""
    rows = idx[decide.can_query(idx)]
    for j in range(10):
        if len(rows) == 0:
            break
        lost = rows[~decide(x_adv[rows], rows)]
        x_adv[lost] = clip_box(x[lost] + (1 + 1e-3 * 2 ** j) * (x_adv[lost] - x[lost]))
        rows = lost[decide.can_query(lost)]
    return x_adv


class SignOPTSettings(Settings):
    """The settings of :class:`SignOPT` (its docstring): max_queries, steps, q >= 1; alpha
    and beta > 0; init and init_tries as :func:`~advlab.attacks.blackbox.decision.
    check_start` says."""

    max_queries: int = 4_000
    steps: int = 1_000
    q: int = 200
    alpha: float = 0.2
    beta: float = 0.001
    init: str = "auto"
    init_tries: int = 100
    seed: int = 0

    def check(self) -> None:
        at_least(1, max_queries=self.max_queries, steps=self.steps, q=self.q)
        positive(alpha=self.alpha, beta=self.beta)
        check_start(self.init, self.init_tries)


@register("signopt", knowledge="label", goal="both", norm="l2", kind="iterative",
          bounded=False)
class SignOPT(BlackBoxAttack):
    r"""Sign-OPT (L2, minimum-norm, label-only; untargeted or targeted), batched.

    Args:
        max_queries: per-example budget.
        steps: iterations at most; the budget usually ends the run first.
        q: Q, sign probes per gradient estimate (the authors' code: 200).
        alpha: initial step size (the authors' code: 0.2).
        beta: initial probe radius (the authors' code: 0.001).
        init: starting points, "auto", "batch" or "noise" (see HopSkipJump).
        init_tries: noise images drawn per example at most.
        seed: seeds the probes and the noise.

    Shape: x N x C x H x W in [0, 1], y (N,); ``AttackResult.queries`` per example; the
    output is x where no adversarial start was found.

    References: Cheng et al., ICLR 2020, arXiv:1909.10773.
    """

    Settings = SignOPTSettings
    positional = ()
    norm = "l2"
    access = "labels"

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        s = begin(oracle, x, y, target, self.init, self.init_tries, generator)
        decide, idx, xs, x_adv = s.decide, s.idx, s.x, x.clone()
        if len(idx) == 0:
            return x_adv
        limit, start = math.sqrt(x[0].numel()), s.points
        theta = unit(start - xs)
        g = (start - xs).flatten(1).norm(dim=1)
        alpha, beta = torch.full_like(g, self.alpha), torch.full_like(g, self.beta)
        g = torch.where(g > 0, local_search(decide, xs, theta, g, beta / 500, idx, limit), g)
        g = torch.where(g.isfinite(), g, (start - xs).flatten(1).norm(dim=1))
        for _ in range(self.steps):
            live = ((oracle.remaining()[idx] >= self.q + 11) & (g > 0)
                    & (beta >= 1e-8)).nonzero().squeeze(1)
            if len(live) == 0:
                break
            grad = sign_grad(decide, xs[live], theta[live], g[live], beta[live], self.q,
                             idx[live], generator)
            new_theta, new_g, new_alpha = self._step(decide, xs[live], theta[live], g[live],
                                                     grad, alpha[live], beta[live],
                                                     idx[live], limit)
            theta[live], g[live] = new_theta, new_g
            small = new_alpha < 1e-4
            alpha[live] = torch.where(small, 1.0, new_alpha)
            beta[live] = torch.where(small, beta[live] * 0.1, beta[live])
        keep = g < (start - xs).flatten(1).norm(dim=1)
        x_adv[idx] = torch.where(broadcast_rows(keep, xs), along(xs, theta, g), start)
        return confirm(decide, x, x_adv, idx)

    def _step(self, decide: Decision, x: Tensor, theta: Tensor, g: Tensor, grad: Tensor,
              alpha: Tensor, beta: Tensor, owner: Tensor, limit: float
              ) -> tuple[Tensor, Tensor, Tensor]:
        """The step-size search; returns the new (theta, g, alpha)."""
        best_theta, best_g, alpha = theta.clone(), g.clone(), alpha.clone()
        tol = beta / 500
        todo = torch.ones_like(g, dtype=torch.bool)
        for _ in range(TRIES):  # grow alpha while g keeps falling
            rows = todo.nonzero().squeeze(1)
            if len(rows) == 0:
                break
            cand = unit(theta[rows] - broadcast_rows(alpha[rows], theta[rows]) * grad[rows])
            new_g = local_search(decide, x[rows], cand, best_g[rows], tol[rows], owner[rows],
                                 limit)
            alpha[rows] *= 2
            better = new_g < best_g[rows]
            best_theta[rows[better]], best_g[rows[better]] = cand[better], new_g[better]
            todo[rows[~better]] = False
        todo = best_g >= g
        for _ in range(TRIES):  # no progress: shrink alpha until g falls
            rows = todo.nonzero().squeeze(1)
            if len(rows) == 0:
                break
            alpha[rows] *= 0.25
            cand = unit(theta[rows] - broadcast_rows(alpha[rows], theta[rows]) * grad[rows])
            new_g = local_search(decide, x[rows], cand, g[rows], tol[rows], owner[rows], limit)
            better = new_g < g[rows]
            best_theta[rows[better]], best_g[rows[better]] = cand[better], new_g[better]
            todo[rows[better]] = False
        return best_theta, best_g, alpha
