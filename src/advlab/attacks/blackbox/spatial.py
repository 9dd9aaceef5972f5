r"""Spatial attack: a small rotation and translation of the image instead of an L_p
perturbation, found by a grid search over the label the model returns.

Each candidate moves the image by the rigid transform that samples, at output pixel p
(coordinates in [-1, 1], bilinear, zero outside the image),

.. math::  x'(p) = x\big(R_\theta\, p - (2 d_x / W,\ 2 d_y / H)\big), \qquad
           R_\theta = \begin{pmatrix} \cos\theta & -\sin\theta \\ \sin\theta & \cos\theta
           \end{pmatrix},

(the content moves by :math:`(d_x, d_y)` pixels and turns by :math:`\theta`), over the grid
of ``rotations`` angles in :math:`[-\theta_{max}, \theta_{max}]` and
``translations`` shifts per axis in :math:`[-d_{max}, d_{max}]` pixels. Candidates are tried
from x itself and the mildest on (smallest
:math:`|\theta|/\theta_{max} + (|d_x| + |d_y|)/d_{max}`), and each example keeps the first
that reaches the goal, so it needs only labels: one query per candidate tried, through the
oracle. Engstrom et al. found such transforms fool
standard and Lp-robust models alike, which an Lp-ball evaluation never sees.

References: Engstrom, Tran, Tsipras, Schmidt & Madry, "Exploring the landscape of spatial
robustness", ICML 2019, arXiv:1712.02779.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.attacks.base import register
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle
from advlab.attacks.settings import Settings, at_least


def rotate_translate(x: Tensor, angle: float, dx: float, dy: float) -> Tensor:
    """x rotated by ``angle`` degrees and shifted by (dx, dy) pixels (bilinear, zero fill).

    Shape: x N x C x H x W -> N x C x H x W.
    """
    h, w = x.shape[-2:]
    t = math.radians(angle)
    theta = torch.tensor([[math.cos(t), -math.sin(t), -2 * dx / w],
                          [math.sin(t), math.cos(t), -2 * dy / h]], dtype=x.dtype,
                         device=x.device).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def grid(max_rotation: float, rotations: int, max_translation: float,
         translations: int) -> list[tuple[float, float, float]]:
    """Every (angle, dx, dy) of the grid, mildest first: the identity (x itself) first."""
    def axis(limit: float, n: int) -> list[float]:
        return torch.linspace(-limit, limit, n).tolist() if n > 1 else [0.0]

    def size(c: tuple[float, float, float]) -> float:
        a, dx, dy = c
        return (abs(a) / max(max_rotation, 1e-12)
                + (abs(dx) + abs(dy)) / max(max_translation, 1e-12))

    cands = [(a, dx, dy) for a in axis(max_rotation, rotations)
             for dx in axis(max_translation, translations)
             for dy in axis(max_translation, translations)]
    return sorted(set(cands) | {(0.0, 0.0, 0.0)}, key=lambda c: (size(c), c))


class SpatialSettings(Settings):
    """The settings of :class:`SpatialGrid` (its docstring): non-negative limits, at least one
    grid point per axis, max_queries >= 1 or None."""

    max_rotation: float = 30.0
    rotations: int = 31
    max_translation: float = 3.0
    translations: int = 5
    max_queries: int | None = None
    seed: int = 0

    def check(self) -> None:
        at_least(0, max_rotation=self.max_rotation, max_translation=self.max_translation)
        at_least(1, rotations=self.rotations, translations=self.translations,
                 max_queries=self.max_queries)


@register("spatial", knowledge="label", goal="both", norm="spatial", kind="iterative",
          bounded=False)
class SpatialGrid(BlackBoxAttack):
    """Grid search over rotations and translations (label-only).

    Args:
        max_rotation: largest angle in degrees (the paper: 30 on MNIST and CIFAR-10).
        rotations: angles on the grid, from -max_rotation to max_rotation.
        max_translation: largest shift in pixels per axis (the paper: 3 on 28 x 28 MNIST).
        translations: shifts per axis on the grid.
        max_queries: per-example budget, or None (the grid size bounds it).
        seed: unused (deterministic); kept for the common interface.

    An example that no candidate moves to the goal is returned as x. Queries: one per
    candidate tried (x itself first), in ``AttackResult.queries``.

    References: Engstrom et al., ICML 2019, arXiv:1712.02779.
    """

    Settings = SpatialSettings
    positional = ()
    norm = None
    access = "labels"

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        x_adv = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for angle, dx, dy in grid(self.max_rotation, self.rotations, self.max_translation,
                                  self.translations):
            todo = todo[oracle.remaining()[todo] >= 1]
            if len(todo) == 0:
                break
            moved = rotate_translate(x[todo], angle, dx, dy)
            out = oracle(moved, owner=todo)
            pred = out if out.dim() == 1 else out.argmax(1)  # labels, or a scores oracle's
            ok = pred != y[todo] if target is None else pred == target[todo]
            x_adv[todo[ok]] = moved[ok]
            todo = todo[~ok]
        return x_adv
