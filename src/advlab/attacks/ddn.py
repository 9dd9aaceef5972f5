r"""DDN, Decoupled Direction and Norm: the direction from the loss gradient, the L2 norm from
a separate multiplicative search.

From :math:`\delta_0 = 0` and :math:`\epsilon_0`, step k with the attacker's cross-entropy
objective J (ascended for the true label, descended for a target) is

.. math::  g = \nabla_\delta J(x + \delta_{k-1}), \qquad
           \tilde\delta = \delta_{k-1} + \alpha_k\, g / \|g\|_2

.. math::  \epsilon_k = \begin{cases} (1 - \gamma)\, \epsilon_{k-1} &
           x + \delta_{k-1} \text{ adversarial} \\ (1 + \gamma)\, \epsilon_{k-1} &
           \text{otherwise} \end{cases}

.. math::  \delta_k = \mathrm{clip}_{[0,1]}\big(x + \epsilon_k\, \tilde\delta /
           \|\tilde\delta\|_2\big) - x

so the iterate lies on the sphere of radius :math:`\epsilon_k` (then in the box), which
shrinks while the point is adversarial and grows while it is not. :math:`\alpha_k` is
annealed by a cosine from :math:`\alpha_0` to 0.01, :math:`\epsilon_k` never exceeds the
largest L2 distance in the box, and the output is the smallest adversarial iterate.

References: Rony, Hafemann, Oliveira, Ben Ayed, Sabourin & Granger, "Decoupling direction
and norm for efficient gradient-based L2 adversarial attacks and defenses", CVPR 2019,
arXiv:1811.09600.
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, register
from advlab.attacks.fmn import cosine
from advlab.attacks.minnorm import Best
from advlab.attacks.settings import Settings, at_least, positive
from advlab.errors import ThreatModelError
from advlab.losses import objective
from advlab.threat import broadcast_rows, clip_box, lp_norm


class DDNSettings(Settings):
    """The settings of :class:`DDN` (its docstring): steps >= 1, init_eps and alpha
    positive, 0 < gamma < 1."""

    steps: int = 100
    init_eps: float = 1.0
    gamma: float = 0.05
    alpha: float = 1.0
    seed: int = 0

    def check(self) -> None:
        at_least(1, steps=self.steps)
        positive(init_eps=self.init_eps, alpha=self.alpha)
        if not 0 < self.gamma < 1:
            raise ThreatModelError(f"DDN needs 0 < gamma < 1, got {self.gamma}")


@register("ddn", knowledge="white", goal="both", norm="l2", kind="iterative", bounded=False)
class DDN(Attack):
    r"""Decoupled Direction and Norm attack (L2, minimum-norm; untargeted or targeted).

    Args:
        steps: iterations (the paper: 100 for MNIST, up to 1,000).
        init_eps: :math:`\epsilon_0`, the first radius.
        gamma: the radius changes by the factor :math:`1 \pm \gamma` per step.
        alpha: initial step size :math:`\alpha_0` of the normalised gradient step,
            annealed to 0.01.
        seed: seeds the random direction used where the gradient is exactly zero.

    Shape: x N x C x H x W in [0, 1], y (N,). Returns (``info``): "norm", each example's L2
    norm (inf where no adversarial point was found; the output is then x).

    References: Rony et al., CVPR 2019, arXiv:1811.09600.
    """

    norm = "l2"

    Settings = DDNSettings
    positional = ()
    objective = staticmethod(objective("ce"))

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        best = Best.start(x)
        delta = torch.zeros_like(x)
        radius = torch.full_like(best.norm, self.init_eps)
        widest = lp_norm(torch.maximum(x, 1 - x), "l2")
        for k in range(self.steps):
            x_adv = (x + delta).requires_grad_(True)
            logits = model(x_adv)
            (grad,) = torch.autograd.grad(self.objective(logits, y, target).sum(), x_adv)
            adversarial = best.record(x + delta, lp_norm(delta, "l2"), logits.detach(), y,
                                      target)
            alpha = cosine(self.alpha, 0.01, k, self.steps)
            moved = delta + alpha * self.unit(grad, generator)
            factor = torch.where(adversarial, 1 - self.gamma, 1 + self.gamma)
            radius = (radius * factor).minimum(widest)
            sphere = moved * broadcast_rows(radius / lp_norm(moved, "l2").clamp_min(1e-12), moved)
            delta = clip_box(x + sphere) - x
        with torch.no_grad():
            best.record(x + delta, lp_norm(delta, "l2"), model(x + delta), y, target)
        return Crafted(best.x, info={"norm": best.norm})

    @staticmethod
    def unit(grad: Tensor, generator: torch.Generator) -> Tensor:
        """g / ||g||_2; a random direction for a row whose gradient is exactly zero."""
        n = lp_norm(grad, "l2")
        zero = n == 0
        if zero.any():
            grad = grad.clone()
            grad[zero] = torch.randn(grad[zero].shape, generator=generator,
                                     device=grad.device, dtype=grad.dtype)
            n = lp_norm(grad, "l2")
        return grad / broadcast_rows(n, grad)
