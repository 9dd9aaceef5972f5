r"""EAD, the elastic-net attack: C&W's objective with an L1 penalty, minimised by FISTA with a
projected shrinkage-thresholding step, which yields sparse (L1-small) perturbations.

For a constant c and the C&W margin loss
:math:`f(x') = \max(Z_y(x') - \max_{j \ne y} Z_j(x'), 0)` (targeted:
:math:`\max(\max_{j \ne t} Z_j - Z_t, 0)`), EAD solves

.. math::  \min_{x' \in [0,1]^D}\ c\, f(x') + \|x' - x\|_2^2 + \beta \|x' - x\|_1

with :math:`g(x') = c f(x') + \|x' - x\|_2^2` smooth, by the iterations (k = 0, 1, ...)

.. math::  x^{k+1} = S_\beta\big(y^k - \alpha_k \nabla g(y^k)\big), \qquad
           y^{k+1} = x^{k+1} + \tfrac{k}{k + 3}\,(x^{k+1} - x^k)

from :math:`x^0 = y^0 = x`, with :math:`\alpha_k = \alpha_0 (1 - k/K)^{1/2}` and the projected
shrinkage-thresholding operator, entry by entry,

.. math::  [S_\beta(z)]_i = \begin{cases} \min(z_i - \beta, 1) & z_i - x_i > \beta \\
           x_i & |z_i - x_i| \le \beta \\ \max(z_i + \beta, 0) & z_i - x_i < -\beta
           \end{cases}

A binary search over c per example (C&W's: halve towards the smallest c that succeeded,
multiply by 10 while none did) wraps the iterations; the result is the adversarial iterate of
smallest elastic-net distance :math:`\|\delta\|_2^2 + \beta\|\delta\|_1` (decision rule "EN")
or smallest L1 distance ("L1") over all constants.

References: Chen, Sharma, Zhang, Yi & Hsieh, "EAD: elastic-net attacks to deep neural
networks via adversarial examples", AAAI 2018, arXiv:1709.04114. Beck & Teboulle, "A fast
iterative shrinkage-thresholding algorithm", SIAM J. Imaging Sci. 2009.
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, register
from advlab.attacks.minnorm import Best, ConstantSearch, still_improving
from advlab.attacks.settings import Settings, at_least, one_of, positive
from advlab.losses import margin
from advlab.threat import lp_norm


def shrink(z: Tensor, x: Tensor, beta: float) -> Tensor:
    r""":math:`S_\beta(z)`: soft-threshold z - x at beta, then clip into the box [0, 1]."""
    d = z - x
    moved = torch.where(d > beta, (z - beta).clamp(max=1.0), (z + beta).clamp(min=0.0))
    return torch.where(d.abs() <= beta, x, moved)


def margin_loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """C&W's f with kappa = 0: positive until the goal is reached, then 0."""
    m = margin(logits, y) if target is None else -margin(logits, target)
    return m.clamp_min(0.0)


class EADSettings(Settings):
    """The settings of :class:`EAD` (its docstring): beta >= 0, steps and search_steps
    >= 1, c0 and lr positive, rule "EN" or "L1"."""

    beta: float = 1e-3
    steps: int = 100
    search_steps: int = 9
    c0: float = 1e-3
    lr: float = 1e-2
    rule: str = "EN"
    abort_early: bool = False
    seed: int = 0

    def check(self) -> None:
        one_of("decision rule", self.rule, ("EN", "L1"))
        at_least(0, beta=self.beta)
        at_least(1, steps=self.steps, search_steps=self.search_steps)
        positive(c0=self.c0, lr=self.lr)


@register("ead", knowledge="white", goal="both", norm="l1", kind="optimization",
          bounded=False)
class EAD(Attack):
    r"""Elastic-net attack (L1 decision rule or elastic-net), minimum-norm.

    Args:
        beta: weight :math:`\beta` of the L1 penalty (the paper: 1e-3 to 1e-1).
        steps: FISTA iterations K per constant.
        search_steps: binary-search steps over the constant c.
        c0: the first constant.
        lr: initial step size :math:`\alpha_0`, decayed as :math:`(1 - k/K)^{1/2}`.
        rule: "EN" (keep the smallest elastic-net distance) or "L1".
        abort_early: end an example's iterations at a constant when its objective
            :math:`c f + \|\delta\|_2^2 + \beta\|\delta\|_1` at :math:`x^k` fell by less
            than 0.01% over the last K/10 of them (C&W's rule, kept by the authors' code).
            Off by default: FISTA's momentum makes the objective non-monotone, and the rule
            cost sparsity (mnist-cnn, 30 images, L1 rule: median L1 11.9 with it, 9.9
            without).
        seed: unused (deterministic); kept for the common interface.

    Shape: x N x C x H x W in [0, 1], y (N,). Returns (``info``): "c", the constant of each
    example's result (nan where none succeeded; the output is then x), and "distance",
    its distance under the decision rule (inf where none succeeded).

    References: Chen et al., AAAI 2018, arXiv:1709.04114.
    """

    norm = "l1"

    Settings = EADSettings
    positional = ()

    def distance(self, delta: Tensor) -> Tensor:
        """The decision rule's distance of each perturbation."""
        l1 = lp_norm(delta, "l1")
        return l1 if self.rule == "L1" else lp_norm(delta, "l2").pow(2) + self.beta * l1

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        best = Best.start(x)
        search = ConstantSearch.start(self.c0, len(x), x)  # x 10 until a success, then bisect
        best_c = torch.full_like(search.c, float("nan"))
        for _ in range(self.search_steps):
            before, c = best.norm.clone(), search.c
            found = self.fista(model, x, y, target, c, best)
            best_c = torch.where(best.norm < before, c, best_c)
            search.update(found)
        return Crafted(best.x, info={"c": best_c, "distance": best.norm})

    def fista(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None, c: Tensor,
              best: Best) -> Tensor:
        """K FISTA iterations at constants c from x; records adversarial iterates in ``best``
        and returns which examples reached the goal at some iterate. With ``abort_early``
        an example whose objective stalls leaves the batch."""
        x_k, y_k = x.clone(), x.clone()
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        idx = torch.arange(len(x), device=x.device)
        prev = torch.full_like(c, float("inf"))
        check_every = max(1, self.steps // 10)
        for k in range(self.steps):
            xs, ys, ts = x[idx], y[idx], None if target is None else target[idx]
            yk = y_k[idx].requires_grad_(True)
            g = c[idx] * margin_loss(model(yk), ys, ts) + (yk - xs).flatten(1).pow(2).sum(1)
            (grad,) = torch.autograd.grad(g.sum(), yk)
            alpha = self.lr * (1 - k / self.steps) ** 0.5
            x_next = shrink(yk.detach() - alpha * grad, xs, self.beta)
            y_k[idx] = x_next + k / (k + 3) * (x_next - x_k[idx])
            x_k[idx] = x_next
            with torch.no_grad():  # the iterate x^{k+1} is the candidate, as in the paper
                logits = model(x_next)
                delta = x_next - xs
                found[idx] |= best.record(x_next, self.distance(delta), logits, ys, ts, idx)
                if self.abort_early and (k + 1) % check_every == 0:
                    loss = (c[idx] * margin_loss(logits, ys, ts) + lp_norm(delta, "l2").pow(2)
                            + self.beta * lp_norm(delta, "l1"))
                    idx = still_improving(loss, prev, idx)
                    if len(idx) == 0:
                        break
        return found
