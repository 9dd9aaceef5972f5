r"""stAdv: spatially transformed adversarial examples, a per-pixel flow field instead of an
additive perturbation.

Each output pixel :math:`p = (u, v)` (row, column) samples the clean image at the displaced
location :math:`(u + \Delta u_p, v + \Delta v_p)` by bilinear interpolation over its four
neighbours :math:`q \in \mathcal N(p)`,

.. math::  x_{adv}(p) = \sum_{q \in \mathcal N(p)} x(q)\,
           \big(1 - |u + \Delta u_p - u_q|\big)\big(1 - |v + \Delta v_p - v_q|\big)

(coordinates clamped to the image: the border pixels repeat), so x_adv is a convex
combination of pixels and stays in [0, 1]. The flow :math:`f = (\Delta u, \Delta v)`
minimises

.. math::  \mathcal L(f) = \mathcal L_{adv}(x_{adv}) + \tau\, \mathcal L_{flow}(f),
           \qquad \mathcal L_{flow}(f) = \sum_p \sum_{q \in \mathcal N_4(p)}
           \sqrt{\|\Delta u_p - \Delta u_q\|_2^2 + \|\Delta v_p - \Delta v_q\|_2^2 + \epsilon}

over the 4-neighbourhood inside the image (each neighbouring pair counted from both sides),
with the C&W margin :math:`\mathcal L_{adv} = \max(Z_y - \max_{i \ne y} Z_i, -\kappa)`
(targeted: :math:`\max(\max_{i \ne t} Z_i - Z_t, -\kappa)`). The paper minimises it with
L-BFGS from f = 0 at one tau; here Adam steps (per-example state,
:class:`advlab.optim.RowAdam`) from f = 0, and each example keeps its adversarial iterate with
the smallest flow loss. With ``search_steps`` > 1, tau is searched per example as L-BFGS's
constant is (:class:`advlab.attacks.minnorm.ConstantSearch`): x 10 after a success (a
smoother flow may still succeed), / 10 after a failure, then geometric bisection, each round
from f = 0; the paper's fixed tau is ``search_steps=1``.

References: Xiao, Zhu, Li, He, Liu & Song, "Spatially transformed adversarial examples",
ICLR 2018, arXiv:1801.02612.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, register
from advlab.attacks.minnorm import Best, ConstantSearch
from advlab.attacks.settings import Settings, at_least, positive
from advlab.errors import InputError
from advlab.losses import margin
from advlab.optim import RowAdam
from advlab.threat import clip


def warp(x: Tensor, flow: Tensor) -> Tensor:
    """x resampled at p + flow(p), bilinear, border pixels repeated.

    Args:
        x: N x C x H x W.
        flow: N x 2 x H x W displacements in pixels, (rows, columns).

    Returns:
        N x C x H x W.
    """
    n, _, h, w = x.shape
    if h < 2 or w < 2:
        raise InputError(f"stAdv needs images of at least 2 x 2 pixels, got {h} x {w}")
    rows = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1) + flow[:, 0]
    cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w) + flow[:, 1]
    grid = torch.stack([2 * cols / (w - 1) - 1, 2 * rows / (h - 1) - 1], dim=-1)  # (x, y)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def flow_loss(flow: Tensor, eps: float = 1e-8) -> Tensor:
    r"""The smoothness loss :math:`\mathcal L_{flow}` per example (N x 2 x H x W -> (N,))."""
    def pairs(d: Tensor) -> Tensor:  # each neighbouring pair once, counted from both sides
        return 2 * (d.pow(2).sum(1) + eps).sqrt().flatten(1).sum(1)
    return pairs(flow[:, :, 1:] - flow[:, :, :-1]) + pairs(flow[..., 1:] - flow[..., :-1])


class StAdvSettings(Settings):
    """The settings of :class:`StAdv` (its docstring): tau and lr > 0, steps and search_steps
    >= 1, kappa >= 0."""

    tau: float = 0.05
    steps: int = 100
    search_steps: int = 3
    lr: float = 0.05
    kappa: float = 0.0
    seed: int = 0

    def check(self) -> None:
        positive(tau=self.tau, lr=self.lr)
        at_least(1, steps=self.steps, search_steps=self.search_steps)
        at_least(0, kappa=self.kappa)


@register("stadv", knowledge="white", goal="both", norm="spatial", kind="optimization",
          bounded=False)
class StAdv(Attack):
    r"""stAdv flow-field attack (untargeted or targeted), minimum flow loss.

    Args:
        tau: weight of the flow loss, the first of the search (the paper: 0.05).
        steps: Adam iterations per value of tau.
        search_steps: values of tau tried per example (1: the paper's fixed tau).
        lr: Adam step size, in pixels.
        kappa: confidence of the margin loss (0: stop pushing once adversarial).
        seed: unused (deterministic); kept for the common interface.

    Shape: x N x C x H x W in [0, 1] (H, W >= 2), y (N,). Returns (``info``): "flow_loss",
    each example's flow loss (inf where no adversarial flow was found; the output is x).

    References: Xiao et al., ICLR 2018, arXiv:1801.02612.
    """

    Settings = StAdvSettings
    positional = ()
    norm = None

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        best = Best.start(x)
        search = ConstantSearch.start(self.tau, len(x), x, up_on_success=True, geometric=True)
        for _ in range(self.search_steps):
            found = self._optimise(model, x, y, target, search.c, best)
            search.update(found)
        return Crafted(best.x, info={"flow_loss": best.norm})

    def _optimise(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                  tau: Tensor, best: Best) -> Tensor:
        """``steps`` Adam steps from f = 0 at the per-example ``tau``; offers every iterate
        to ``best`` and returns which examples reached the goal."""
        n, _, h, w = x.shape
        flow = torch.zeros(n, 2, h, w, dtype=x.dtype, device=x.device)
        adam = RowAdam.like(flow, self.lr)
        rows = torch.arange(n, device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for i in range(self.steps + 1):
            f = flow.requires_grad_(i < self.steps)
            x_adv = warp(x, f)
            logits = model(x_adv)
            smooth = flow_loss(f)
            found |= best.record(x_adv.detach(), smooth.detach(), logits.detach(), y, target)
            if i == self.steps:
                return found
            adv = clip(margin(logits, y) if target is None else -margin(logits, target),
                       -self.kappa)
            (grad,) = torch.autograd.grad((adv + tau * smooth).sum(), f)
            flow = adam.step(flow.detach(), grad, rows)
        return found
