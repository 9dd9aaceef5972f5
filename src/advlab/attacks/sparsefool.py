r"""SparseFool: sparse (few-pixel) perturbations from DeepFool's boundary point and the
boundary's normal there, by an L1 linear program solved greedily coordinate by coordinate.

From :math:`x^{(0)} = x_0`, iteration i, until :math:`x^{(i)}` is adversarial:

1. DeepFool (L2) from :math:`x^{(i)}` reaches :math:`x_{DF}`; the boundary point is
   :math:`x_B = x_0 + \lambda (x_{DF} - x_0)` (:math:`\lambda \ge 1` pushes it beyond the
   boundary, trading sparsity for fewer iterations);
2. the boundary's normal there is :math:`w = \nabla Z_k(x_B) - \nabla Z_y(x_B)`, k the
   closest other class;
3. the linear solver moves :math:`x^{(i)}` onto the half-space
   :math:`w^\top (x' - x_B) \ge 0` changing as few coordinates as it can: repeatedly the unused
   coordinate j of largest :math:`|w_j|` by :math:`(|w^\top (x' - x_B)| + \beta) / |w_j|` in
   the direction :math:`\mathrm{sign}(w_j)`, clipped to the box [0, 1] (a saturated
   coordinate leaves the rest to the next one);
4. the candidate is :math:`x_0 + (1 + \eta)(x^{(i+1)} - x_0)`, clipped to the box.

Where the boundary bends so much that the plane at :math:`x_B` does not separate
:math:`x^{(i)}` from :math:`x_B` (:math:`w^\top (x^{(i)} - x_B) \ge 0`), the solver would
not move and the example would stay stuck; advlab then takes the plane at :math:`x_{DF}`
itself (:math:`\lambda = 1`) for that example (:meth:`SparseFool.plane`; with and without
this fallback: ``python benchmarks/whitebox_minnorm.py --sections sparsefool-fallback``,
figures in benchmarks/results/whitebox_minnorm-sparsefool-fallback-<model>.json).

For a linear binary classifier one iteration suffices, and the result changes exactly the
coordinates of largest :math:`|w_j|` needed to cross the boundary.

References: Modas, Moosavi-Dezfooli & Frossard, "SparseFool: a few pixels make a big
difference", CVPR 2019, arXiv:1811.02248.
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, register
from advlab.attacks.deepfool import DeepFool
from advlab.attacks.settings import Settings, at_least
from advlab.losses import max_other
from advlab.threat import broadcast_rows, clip_box

BETA = 1e-3  # added to the distance to the plane, as in the authors' solver, to cross it


def linear_solver(x: Tensor, w: Tensor, x_b: Tensor) -> Tensor:
    r"""Greedy sparse move of each row of x onto :math:`\{x' : w^\top (x' - x_B) \ge 0\}`
    inside the box [0, 1]: the coordinates of largest |w| first, each by just enough to reach
    the plane (or as far as the box allows).

    Shape: x, w, x_b N x ... -> N x ... (rows already across the plane are returned as they
    are).
    """
    z = x.flatten(1).clone()
    wf, b = w.flatten(1), x_b.flatten(1)
    free = wf != 0
    rows = torch.arange(len(z), device=z.device)
    for _ in range(z.shape[1]):
        f = ((z - b) * wf).sum(1)
        live = (f < 0) & free.any(1)
        if not live.any():
            break
        r = rows[live]
        j = torch.where(free[r], wf[r].abs(), -1.0).argmax(1)
        wj = wf[r, j]
        step = ((f[r].abs() + BETA) / wj.abs()).clamp_min(1e-4) * wj.sign()
        z[r, j] = (z[r, j] + step).clamp(0.0, 1.0)
        free[r, j] = False
    return z.view_as(x)


class SparseFoolSettings(Settings):
    """The settings of :class:`SparseFool` (its docstring): lam >= 1, overshoot >= 0,
    max_iter and deepfool_iter >= 1."""

    lam: float = 3.0
    overshoot: float = 0.02
    max_iter: int = 20
    deepfool_iter: int = 50
    seed: int = 0

    def check(self) -> None:
        at_least(1, lam=self.lam, max_iter=self.max_iter, deepfool_iter=self.deepfool_iter)
        at_least(0, overshoot=self.overshoot)


@register("sparsefool", knowledge="white", goal="untargeted", norm="l0", kind="iterative",
          bounded=False)
class SparseFool(Attack):
    r"""SparseFool, minimum-L0 (sparse) and untargeted.

    Args:
        lam: :math:`\lambda \ge 1`, how far beyond DeepFool's boundary point x_B lies (the
            paper: 1 to 3; larger is faster and less sparse).
        overshoot: :math:`\eta`, the final push beyond the plane.
        max_iter: most SparseFool iterations per example.
        deepfool_iter: most DeepFool steps per iteration.
        seed: unused (deterministic); kept for the common interface.

    Returns (``info``): "iterations" per example.

    References: Modas et al., CVPR 2019, arXiv:1811.02248.
    """

    Settings = SparseFoolSettings
    positional = ()
    norm = "l0"

    @property
    def deepfool(self) -> DeepFool:
        """The DeepFool run of each iteration (``deepfool_iter`` steps, 10 candidates)."""
        return DeepFool(max_iter=self.deepfool_iter, candidates=10)

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        x_i, out = x.clone(), x.clone()
        iters = torch.zeros(len(x), dtype=torch.int64, device=x.device)
        for _ in range(self.max_iter):
            with torch.no_grad():
                idx = (model(out).argmax(1) == y).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            x0, ys = x[idx], y[idx]
            x_df = self.deepfool.perturb(model, x_i[idx], ys, None, None, generator).x_adv
            x_b, w = self.plane(model, x_i[idx], x_df, x0 + self.lam * (x_df - x0), ys)
            x_i[idx] = linear_solver(x_i[idx], w, x_b)
            out[idx] = clip_box(x0 + (1 + self.overshoot) * (x_i[idx] - x0))
            iters[idx] += 1
        return Crafted(out, info={"iterations": iters})

    def plane(self, model: Model, x_i: Tensor, x_df: Tensor, x_b: Tensor,
              y: Tensor) -> tuple[Tensor, Tensor]:
        """The plane (a point, its normal) that the solver moves x_i onto: through x_B with
        the boundary's normal there, or, for the rows where it does not separate x_i from x_B
        (far out, where the boundary bends), through x_DF with the normal there."""
        w = self.normal(model, x_b, y)
        behind = ((x_i - x_b) * w).flatten(1).sum(1) >= 0
        if behind.any():
            x_b[behind] = x_df[behind]
            w[behind] = self.normal(model, x_df[behind], y[behind])
        return x_b, w

    @staticmethod
    def normal(model: Model, x_b: Tensor, y: Tensor) -> Tensor:
        r""":math:`\nabla (\max_{k \ne y} Z_k - Z_y)` at x_B: the normal of the closest
        boundary, pointing away from class y."""
        x_b = x_b.detach().requires_grad_(True)
        logits = model(x_b)
        gap = max_other(logits, y) - logits.gather(1, y[:, None]).squeeze(1)
        (w,) = torch.autograd.grad(gap.sum(), x_b)
        return w / broadcast_rows(w.flatten(1).norm(dim=1).clamp_min(1e-12), w)
