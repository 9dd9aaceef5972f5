r"""The robust-accuracy-vs-eps curve from one minimum-norm run, confirmed on a grid.

A minimum-norm attack (FAB, C&W, DeepFool, ...) gives each example the smallest adversarial
radius it found, :math:`\hat\epsilon_i` (0 for an example misclassified clean, inf where it
found nothing). The robust accuracy at every eps follows from one run:

.. math::  \mathrm{acc}(\epsilon) = \frac1N \sum_i 1[\hat\epsilon_i > \epsilon]

A minimum-norm attack only bounds the true radius from above, so at the points of a grid a
bounded attack (APGD by default) attacks every example; an example it fools at
:math:`\epsilon_j` has :math:`\hat\epsilon_i \le \epsilon_j`. The curve is computed from the
per-example minimum of both, so at every grid point it is never higher than either the
minimum-norm run or the bounded attack alone (and it is non-increasing in eps). The bounded
attack sees the same batch as it would alone (attacking only the examples the run left robust
would change its random starts, and a curve measured that way was seen above the bounded
attack alone at one grid point: benchmarks/robustness_curve.py), and it stops early on the
examples it fools, so those cost little.

:class:`CurveAttack` is both runs as one attack, so that the runner measures, stores, shards
and resumes a curve like any cell (:class:`~advlab.evaluation.plan.CurveCell`): its result's
norm column holds each example's smallest adversarial radius (inf where none was found) and
:func:`summary` reads the curve back from that column.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advlab import attacks
from advlab.attacks.base import AttackResult, Model, is_success
from advlab.errors import InputError
from advlab.threat import all_norms

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


def _grid(grid: Sequence[float] | Tensor | np.ndarray) -> np.ndarray:
    """The radii sorted ascending, float64. Raises InputError: none, or a negative one."""
    radii = np.sort(np.asarray(torch.as_tensor(grid, dtype=torch.float64).cpu()))
    if radii.size == 0 or (radii < 0).any() or not np.isfinite(radii).all():
        raise InputError(f"the grid needs one or more finite non-negative radii, "
                         f"got {list(radii)}")
    return radii


class CurveAttack:
    """One minimum-norm run, confirmed at each grid radius by a bounded attack, as one attack:
    ``curve(model, x, y)`` returns an :class:`~advlab.attacks.AttackResult` whose ``x_adv``
    is each example's adversarial image of smallest known radius (x itself where none was
    found) and whose ``norms[norm]`` is that radius: 0 for an example misclassified clean,
    the smaller of the run's norm and the first grid radius at which the bounded attack
    fooled it, inf where neither did. ``info["minnorm_smallest"]`` is the run's alone.

    Args:
        minnorm: an unbounded (minimum-norm) attack.
        grid: the radii the bounded attack confirms, non-negative.
        bounded: eps -> the bounded attack at that radius, in the norm of ``minnorm``;
            None for the minimum-norm run alone.

    Raises:
        InputError: a bounded ``minnorm``, a bad grid, or a bounded attack of another norm
            (checked at the first grid radius here, at every radius when it runs).
    """

    def __init__(self, minnorm: attacks.Attack, grid: Sequence[float] | Tensor | np.ndarray,
                 bounded: Callable[[float], attacks.Attack] | None = None) -> None:
        if minnorm.norm is None or minnorm.bounded:
            raise InputError(f"the minimum-norm attack must be unbounded with a norm, got "
                             f"{type(minnorm).__name__} (norm {minnorm.norm!r}, bounded "
                             f"{minnorm.bounded})")
        self.minnorm, self.grid, self.bounded = minnorm, _grid(grid), bounded
        self.norm: str = minnorm.norm
        if bounded is not None:
            self._confirming(float(self.grid[0]))

    def _confirming(self, eps: float) -> attacks.Attack:
        assert self.bounded is not None
        atk = self.bounded(eps)
        if not atk.bounded or atk.norm != self.norm:
            raise InputError(f"the confirming attack must be bounded in {self.norm}, got "
                             f"{type(atk).__name__} (norm {atk.norm!r}, bounded {atk.bounded})")
        return atk

    def __call__(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None = None
                 ) -> AttackResult:
        """The curve's attack on (x, y), untargeted (see the class)."""
        if target is not None:
            raise InputError("a robustness curve is untargeted (no target selection)")
        return self.confirm(model, x, y, self.minnorm(model, x, y))

    def confirm(self, model: Model, x: Tensor, y: Tensor, res: AttackResult) -> AttackResult:
        """The curve's result given the minimum-norm run's result ``res`` on (x, y): the
        bounded attack at each grid radius on all of (x, y), as it would run alone."""
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        first = smallest_eps(res.norms[self.norm].double(), res.success, correct)
        best = first.clone()
        keep = (res.success & correct).view(-1, *[1] * (x.dim() - 1))
        x_adv = torch.where(keep, res.x_adv, x)
        for e in self.grid if self.bounded is not None else ():
            r = self._confirming(float(e))(model, x, y)
            hit = r.success & (best > e)  # fooled at e, where nothing smaller was known
            best[hit] = float(e)
            x_adv[hit] = r.x_adv[hit]
            log.info("robustness curve: eps %.4g, %d of %d robust", e, int((best > e).sum()),
                     len(x))
        with torch.no_grad():
            logits = model(x_adv)
        success = is_success(logits, y, None)
        norms = all_norms(x_adv - x)
        radius = torch.minimum(norms[self.norm].double(), best)  # within e of x: at most e
        norms[self.norm] = torch.where(success, radius, torch.full_like(radius, float("inf")))
        return AttackResult(x_adv=x_adv, success=success, norms=norms, logits=logits.detach(),
                            info={"minnorm_smallest": first})

    def __repr__(self) -> str:
        confirm = "" if self.bounded is None else \
            f", bounded={self._confirming(float(self.grid[0]))!r}"
        return f"CurveAttack(minnorm={self.minnorm!r}, grid={self.grid.tolist()}{confirm})"


def from_names(minnorm: str, grid: Sequence[float], bounded: str | None = "apgd-ce", *,
               params: dict[str, Any] | None = None,
               bounded_params: dict[str, Any] | None = None, norm: str | None = None,
               seed: int = 0) -> CurveAttack:
    """A :class:`CurveAttack` of registered attacks (what a ``[[curves]]`` table names).

    Args:
        minnorm: a registered minimum-norm attack, built with ``params``.
        grid: the radii to confirm.
        bounded: a registered bounded attack, built with ``bounded_params`` and each grid
            eps; None for the minimum-norm run alone.
        norm: given to both attacks when not None (else each keeps its own, which must agree).
        seed: the seed of both.

    Raises:
        UnknownNameError, ParameterError: as :func:`advlab.attacks.get`.
        InputError: as :class:`CurveAttack`.
    """
    kw = {} if norm is None else {"norm": norm}
    mn = attacks.get(minnorm, **kw, seed=seed, **(params or {}))
    confirm = None if bounded is None else (lambda e: attacks.get(
        bounded, **kw, eps=e, seed=seed, **(bounded_params or {})))
    return CurveAttack(mn, grid, confirm)


def robustness_curve(model: Model, x: Tensor, y: Tensor, grid: list[float] | Tensor, *,
                     norm: str = "linf", minnorm: str | attacks.Attack = "fab",
                     bounded: str | None = "apgd-ce", seed: int = 0,
                     minnorm_kwargs: dict[str, Any] | None = None,
                     bounded_kwargs: dict[str, Any] | None = None) -> RobustnessCurve:
    """Run a minimum-norm attack once and a bounded attack at each grid radius
    (:class:`CurveAttack`).

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
    mn = minnorm if isinstance(minnorm, attacks.Attack) else attacks.get(
        minnorm, norm=norm, seed=seed, **(minnorm_kwargs or {}))
    if mn.norm != norm:
        raise InputError(f"the minimum-norm attack must be unbounded with norm {norm!r}, got "
                         f"{type(mn).__name__} (norm {mn.norm!r}, bounded {mn.bounded})")
    confirm = None if bounded is None else (lambda e: attacks.get(
        bounded, eps=e, norm=norm, seed=seed, **(bounded_kwargs or {})))
    curve = CurveAttack(mn, grid, confirm)
    res = curve(model, x, y)
    best, first = res.norms[norm], res.info["minnorm_smallest"]
    return RobustnessCurve(grid=curve.grid, accuracy=accuracy_at(best, curve.grid),
                           minnorm_accuracy=accuracy_at(first, curve.grid), smallest=best,
                           minnorm_smallest=first)


def summary(examples: dict[str, np.ndarray], norm: str, grid: Sequence[float],
            points: int = 41) -> dict[str, Any]:
    """A stored curve cell's curve, from its per-example rows (see :class:`CurveAttack`).

    Args:
        examples: the cell's columns (``success`` and the norm column ``norm``).
        norm: the curve's norm.
        grid: the radii the bounded attack confirmed.
        points: the radii of the dense curve, evenly from 0 to the largest grid radius.

    Returns:
        {"norm", "grid", "accuracy" (at the grid), "eps", "dense" (the curve at ``eps``),
        "robust" (the fraction never fooled)}; radii compared in float32, the precision of
        the attacks' norms.
    """
    radii = np.where(np.asarray(examples["success"]).astype(bool),
                     np.asarray(examples[norm], dtype=np.float64), np.inf)
    dense = np.linspace(0.0, max(grid), points)

    def acc(eps: Sequence[float] | np.ndarray) -> list[float]:
        r, e = radii.astype(np.float32), np.asarray(eps, dtype=np.float32)
        return [float(v) for v in (r[:, None] > e[None]).mean(0)] if len(r) else \
            [float("nan")] * len(e)
    return {"norm": norm, "grid": [float(e) for e in grid], "accuracy": acc(grid),
            "eps": dense.tolist(), "dense": acc(dense),
            "robust": float(np.isinf(radii).mean()) if len(radii) else float("nan")}
