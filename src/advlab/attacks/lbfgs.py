r"""The L-BFGS attack of Szegedy et al., the lecture's first adversarial examples.

Targeted: for each example, with :math:`x' = \mathrm{clip}_{[0,1]}(x + \Pi_\epsilon(r))`,

.. math::  r^*(c) = \arg\min_r\ \mathcal{L}(f(x'), t_{adv}) + c\, \|x' - x\|_2^2

(cross-entropy of the target plus an L2 penalty; the lecture's slide), solved with
:class:`torch.optim.LBFGS` on the sum of the per-example objectives (they are independent, so
their sum has the same minimisers; the line search is shared by the batch). The box is kept
by clipping inside the objective (a projected variant of the paper's box-constrained
L-BFGS-B): coordinates pushed outside [0, 1] have zero gradient there and are clipped in the
output. With ``eps`` the perturbation is also projected onto the eps-ball of ``norm``
(the lecture's :math:`|r_i| < \epsilon` for ``norm="linf"``).

A search over c per example then looks for the *largest* c whose minimiser still reaches the
target (the strongest penalty, hence the smallest perturbation; the paper's "minimum c"
weights the loss instead): c is multiplied or divided by 10 until it brackets the boundary,
then bisected geometrically. The smallest successful perturbation is kept.

References: Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow & Fergus, "Intriguing
properties of neural networks", ICLR 2014, arXiv:1312.6199.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, is_success, register
from advlab.errors import ThreatModelError
from advlab.threat import ball


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
        target_selection: how the base picks a target when none is given.
        seed: seeds the random target selection.

    Returns (``info``): "c", each example's largest successful c (nan if none).

    References: Szegedy et al., ICLR 2014, arXiv:1312.6199.
    """

    targeted_only = True

    def __init__(self, *, eps: float | None = None, norm: str = "l2", c0: float = 1.0,
                 search_steps: int = 8, max_iter: int = 20, history: int = 10,
                 target_selection: str = "random", seed: int = 0) -> None:
        if norm not in ("l2", "linf"):
            raise ThreatModelError(f"L-BFGS supports norm 'l2' or 'linf', got {norm!r}")
        if c0 <= 0 or search_steps < 1 or max_iter < 1 or history < 1:
            raise ThreatModelError("need c0 > 0, search_steps >= 1, max_iter >= 1, history >= 1")
        if eps is not None and eps < 0:
            raise ThreatModelError(f"eps must be non-negative, got {eps}")
        if target_selection not in ("random", "least_likely", "next"):
            raise ThreatModelError(f"unknown target selection {target_selection!r}")
        self.norm, self.eps, self.seed = norm, eps, seed
        self.c0, self.search_steps, self.max_iter, self.history = c0, search_steps, max_iter, \
            history
        self.target_selection = target_selection

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        assert target is not None  # targeted_only: the base chose one
        c = torch.full((len(x),), self.c0, dtype=x.dtype, device=x.device)
        ok_c, fail_c = torch.zeros_like(c), torch.full_like(c, math.inf)
        best, best_l2 = x.clone(), torch.full_like(c, math.inf)
        for _ in range(self.search_steps):
            x_new = self._minimise(model, x, target, c, eps)
            with torch.no_grad():
                hit = is_success(model(x_new), y, target)
                l2 = (x_new - x).flatten(1).norm(dim=1)
                better = hit & (l2 < best_l2)
                best[better], best_l2[better] = x_new[better], l2[better]
                ok_c = torch.where(hit, torch.maximum(ok_c, c), ok_c)
                fail_c = torch.where(hit, fail_c, torch.minimum(fail_c, c))
                both = (ok_c > 0) & (fail_c < math.inf)
                c = torch.where(both, (ok_c * fail_c).sqrt(), torch.where(hit, c * 10, c / 10))
        ok_c = torch.where(best_l2 < math.inf, ok_c, math.nan)
        return Crafted(best, info={"c": ok_c})

    def image(self, x: Tensor, r: Tensor, eps: Tensor | None) -> Tensor:
        """x' = clip(x + r), r projected onto the eps-ball first when there is one."""
        if eps is not None:
            r = ball(self.norm).project(r, eps)
        return (x + r).clamp(0, 1)

    def _minimise(self, model: Model, x: Tensor, target: Tensor, c: Tensor,
                  eps: Tensor | None) -> Tensor:
        """L-BFGS on sum_n CE(f(x'_n), t_n) + c_n ||x'_n - x_n||^2 from r = 0."""
        r = torch.zeros_like(x, requires_grad=True)
        opt = torch.optim.LBFGS([r], lr=1, max_iter=self.max_iter,
                                history_size=self.history, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            xa = self.image(x, r, eps)
            d2 = (xa - x).flatten(1).pow(2).sum(1)
            loss = (F.cross_entropy(model(xa), target, reduction="none") + c * d2).sum()
            (r.grad,) = torch.autograd.grad(loss, r)
            return loss.detach()

        opt.step(closure)
        return self.image(x, r.detach(), eps)
