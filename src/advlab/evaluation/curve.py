r"""The robust-accuracy-vs-eps curve from one minimum-norm run, confirmed on a grid.

A minimum-norm attack (FAB, C&W, DeepFool, ...) gives each example the smallest adversarial
radius it found, :math:`\hat\epsilon_i` (0 for an example misclassified clean, inf where it
found nothing). The robust accuracy at every eps follows from one run:

.. math::  \mathrm{acc}(\epsilon) = \frac1N \sum_i 1[\hat\epsilon_i > \epsilon]

A minimum-norm attack only bounds the true radius from above, so at the points of a grid a
bounded attack (APGD by default) attacks the examples the run left robust there; an example it
fools at :math:`\epsilon_j` has :math:`\hat\epsilon_i \le \epsilon_j`. The curve is computed from
the per-example minimum of both, so at every grid point it is never higher than either the
minimum-norm run or the bounded attack alone (and it is non-increasing in eps).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advlab import attacks
from advlab.attacks.base import Model
from advlab.errors import InputError

log = logging.getLogger(__name__)


def smallest_eps(norms: Tensor, success: Tensor, clean_correct: Tensor) -> Tensor:
    """Per example, the smallest adversarial radius known: 0 where the clean prediction is
    wrong, the attack's norm where it succeeded, inf otherwise.

    Shape: (N,) each -> (N,), the dtype of ``norms``.
    """
    found = torch.where(success, norms, torch.full_like(norms, float("inf")))
    return torch.where(clean_correct, found, torch.zeros_like(found))


def accuracy_at(smallest: Tensor, eps: Tensor | np.ndarray | list[float]) -> np.ndarray:
    """Robust accuracy at each eps: the fraction of examples whose smallest adversarial
    radius exceeds it, compared in the precision of ``smallest`` (a float32 norm of 0.3 is
    0.3). Shape: (N,), (E,) -> (E,)."""
    e = torch.as_tensor(np.asarray(eps, dtype=np.float64)).to(smallest)
    return (smallest[:, None] > e[None]).double().mean(0).cpu().numpy()


@dataclass
class RobustnessCurve:
    """Robust accuracy against eps for one model, norm and set of images.

    Attributes:
        grid: the radii confirmed by the bounded attack (E,).
        accuracy: the curve at the grid, from ``smallest`` (E,).
        minnorm_accuracy: the minimum-norm run alone at the grid (E,).
        smallest: per example, the smallest adversarial radius found by either attack (N,).
        minnorm_smallest: the minimum-norm run's radius per example (N,).
    """

    grid: np.ndarray
    accuracy: np.ndarray
    minnorm_accuracy: np.ndarray
    smallest: Tensor
    minnorm_smallest: Tensor

    def at(self, eps: Tensor | np.ndarray | list[float]) -> np.ndarray:
        """The curve at any radii (between grid points it is the minimum-norm run's, lowered
        where the bounded attack found smaller radii)."""
        return accuracy_at(self.smallest, eps)


def robustness_curve(model: Model, x: Tensor, y: Tensor, grid: list[float] | Tensor, *,
                     norm: str = "linf", minnorm: str | attacks.Attack = "fab",
                     bounded: str | None = "apgd-ce", seed: int = 0,
                     minnorm_kwargs: dict[str, Any] | None = None,
                     bounded_kwargs: dict[str, Any] | None = None) -> RobustnessCurve:
    """Run a minimum-norm attack once and a bounded attack at each grid radius.

    Args:
        model: the classifier (eval mode).
        x, y: images N x C x H x W in [0, 1] and labels (N,).
        grid: the radii to confirm (E,), non-negative.
        norm: the norm of the radii ("linf", "l2", ...); both attacks must use it.
        minnorm: a registered minimum-norm attack name (unbounded) or an attack object.
        bounded: a registered bounded attack name, or None for the minimum-norm run alone.
        seed: passed to attacks built from names.
        minnorm_kwargs, bounded_kwargs: keyword arguments for the attacks built from names.

    Returns:
        A :class:`RobustnessCurve`.

    Raises:
        InputError: a negative or empty grid, or attacks of another norm.
    """
    radii = np.sort(np.asarray(torch.as_tensor(grid, dtype=torch.float64).cpu()))
    if radii.size == 0 or (radii < 0).any():
        raise InputError(f"the grid needs one or more non-negative radii, got {list(radii)}")
    mn = minnorm if isinstance(minnorm, attacks.Attack) else attacks.get(
        minnorm, norm=norm, seed=seed, **(minnorm_kwargs or {}))
    if mn.norm != norm or mn.bounded:
        raise InputError(f"the minimum-norm attack must be unbounded with norm {norm!r}, got "
                         f"{type(mn).__name__} (norm {mn.norm!r}, bounded {mn.bounded})")
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    res = mn(model, x, y)
    first = smallest_eps(res.norms[norm], res.success, correct)
    best = first.clone()
    for e in radii if bounded is not None else ():
        todo = (best > e).nonzero().squeeze(1)  # the others are fooled at e already
        if len(todo) == 0:
            continue
        atk = attacks.get(bounded, eps=float(e), norm=norm, seed=seed, **(bounded_kwargs or {}))
        if not atk.bounded or atk.norm != norm:
            raise InputError(f"{bounded!r} is not a bounded {norm} attack")
        hit = todo[atk(model, x[todo], y[todo]).success]
        best[hit] = torch.clamp(best[hit], max=float(e))
        log.info("robustness curve: eps %.4g, %d of %d robust", e, int((best > e).sum()), len(x))
    return RobustnessCurve(grid=radii, accuracy=accuracy_at(best, radii),
                           minnorm_accuracy=accuracy_at(first, radii), smallest=best,
                           minnorm_smallest=first)
