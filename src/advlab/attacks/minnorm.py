r"""What the C&W family of minimum-norm attacks shares: the loss, the search over the constant,
the best example so far, and the final re-check.

C&W, L-BFGS, ZOO and AutoZOOM all minimise a distance plus a weighted attack loss,

.. math::  \min_{x'}\ D(x', x) + c\, f(x'),

for several values of the constant c per example, keeping the closest adversarial point:

- :func:`cw_margin`: C&W's f on logits Z (or on log-probabilities),
  :math:`f = \max(Z_y - \max_{i \ne y} Z_i, -\kappa)` untargeted and
  :math:`\max(\max_{i \ne t} Z_i - Z_t, -\kappa)` targeted; it reaches its floor
  :math:`-\kappa` exactly when the example is adversarial with margin :math:`\kappa`.
- :class:`ConstantSearch`: per example, c x 10 until the first success, then bisection
  between the bounds found (C&W's schedule); L-BFGS searches the other way (the largest c
  that still succeeds) with a geometric mean.
- :class:`Best`: the closest adversarial point seen per example.
- :func:`confirm`: the found points re-checked on the whole batch.

References: Carlini & Wagner, "Towards evaluating the robustness of neural networks", IEEE S&P
2017, arXiv:1608.04644.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from advlab.attacks.base import Model, is_success
from advlab.losses import margin
from advlab.threat import clip, clip_box

if TYPE_CHECKING:
    from advlab.attacks.blackbox.oracle import Oracle


def cw_margin(scores: Tensor, y: Tensor, target: Tensor | None, kappa: float, *,
              log_probs: bool = False) -> Tensor:
    r"""C&W's f: :math:`\max(Z_y - \max_{i\ne y} Z_i, -\kappa)` (untargeted) or
    :math:`\max(\max_{i\ne t} Z_i - Z_t, -\kappa)` (targeted), on the logits Z, or on the
    log-probabilities :math:`\log \mathrm{softmax}(Z)` with ``log_probs`` (ZOO, AutoZOOM:
    their differences are the logit differences, but they are bounded by the scores).

    Shape:
        scores: N x K; y, target: (N,) -> (N,).
    """
    z = scores.log_softmax(1) if log_probs else scores
    if target is None:
        return margin(z, y, kappa)
    return clip(-margin(z, target), lo=-kappa)


def cw_success(logits: Tensor, y: Tensor, target: Tensor | None, kappa: float) -> Tensor:
    """Adversarial with confidence kappa: the argmax criterion and a margin of at least kappa."""
    ok = is_success(logits, y, target)
    if kappa > 0:
        ok &= cw_margin(logits, y, target, kappa) <= -kappa
    return ok


@dataclass
class ConstantSearch:
    """The per-example search over the constant c.

    C&W (``up_on_success=False``): a success at c bounds the answer above (a smaller c may
    still succeed), a failure below; c grows x 10 until the first success, then bisects.
    L-BFGS (``up_on_success=True``, ``geometric=True``): c weights the distance, so a success
    bounds it below; c moves x 10 or / 10 until both bounds are known, then takes their
    geometric mean.

    Attributes:
        c: the current constants (N,).
        lo, hi: the bounds found so far (0 and inf: none yet).
    """

    c: Tensor
    lo: Tensor
    hi: Tensor
    up_on_success: bool = False
    geometric: bool = False

    @classmethod
    def start(cls, c0: float, n: int, like: Tensor, *, up_on_success: bool = False,
              geometric: bool = False, dtype: torch.dtype | None = None) -> ConstantSearch:
        """Every example at ``c0``, no bounds (device of ``like``, its dtype unless given)."""
        c = torch.full((n,), c0, dtype=dtype or like.dtype, device=like.device)
        return cls(c, torch.zeros_like(c), torch.full_like(c, math.inf), up_on_success,
                   geometric)

    def update(self, found: Tensor) -> Tensor:
        """The next constants after the outcome ``found`` (bool, N) at the current ones."""
        c, lo, hi = self.c, self.lo, self.hi
        if self.up_on_success:
            self.lo = torch.where(found, torch.maximum(lo, c), lo)
            self.hi = torch.where(found, hi, torch.minimum(hi, c))
            bracketed = (self.lo > 0) & (self.hi < math.inf)
            outside = torch.where(found, c * 10, c / 10)
        else:
            self.hi = torch.where(found, torch.minimum(hi, c), hi)
            self.lo = torch.where(found, lo, torch.maximum(lo, c))
            bracketed = self.hi < math.inf
            outside = c * 10
        mid = (self.lo * self.hi).sqrt() if self.geometric else (self.lo + self.hi) / 2
        self.c = torch.where(bracketed, mid, outside)
        return self.c


def still_improving(loss: Tensor, prev: Tensor, idx: Tensor) -> Tensor:
    """C&W's early abort: the rows ``idx`` whose objective ``loss`` fell by at least 0.01%
    since the last check (``prev``, indexed by example, updated in place)."""
    stall = loss >= prev[idx] - 1e-4 * prev[idx].abs()
    prev[idx] = loss
    return idx[~stall]


@dataclass
class Best:
    """The closest adversarial point seen so far, per example.

    Attributes:
        x: N x C x H x W, the best points (x itself where none was found).
        norm: (N,), their distances to x (inf: none found yet).
    """

    x: Tensor
    norm: Tensor

    @classmethod
    def start(cls, x: Tensor, dtype: torch.dtype | None = None) -> Best:
        return cls(x.clone(), torch.full((len(x),), math.inf, dtype=dtype or x.dtype,
                                         device=x.device))

    @property
    def found(self) -> Tensor:
        """bool (N,): an adversarial point was seen."""
        return self.norm < math.inf

    def update(self, owner: Tensor, x_new: Tensor, norm: Tensor, ok: Tensor) -> Tensor:
        """Offer candidate points ``x_new`` of the examples ``owner`` (several per example
        allowed) at distances ``norm``; the adversarial ones (``ok``) closer than the best
        replace it.

        Returns:
            bool (N,): the examples whose best point changed.
        """
        cand = torch.where(ok, norm.to(self.norm.dtype), math.inf)
        per = torch.full_like(self.norm, math.inf).scatter_reduce(0, owner, cand, reduce="amin")
        better = per < self.norm
        if better.any():
            rows = (better[owner] & (cand == per[owner])).nonzero().squeeze(1)
            self.x[owner[rows]] = x_new[rows].to(self.x.dtype)
            self.norm[better] = per[better]
        return better

    def record(self, x_adv: Tensor, norm: Tensor, logits: Tensor, y: Tensor,
               target: Tensor | None, idx: Tensor | None = None) -> Tensor:
        """Offer one candidate per example of the rows ``idx`` (None: all), judged by the
        model's ``logits`` there (what FMN, DDN and EAD do at each iterate).

        Returns:
            bool: the rows that reach the goal (whether or not they were closer).
        """
        ok = is_success(logits, y, target)
        owner = torch.arange(len(self.norm), device=ok.device) if idx is None else idx
        self.update(owner, x_adv, norm, ok)
        return ok


@dataclass
class ScoreRun:
    """One run of a score-based C&W-style attack (ZOO, AutoZOOM), never stored on the attack:
    the oracle, the batch, the search over c, the best points, and which examples succeeded
    since c last changed.

    Attributes:
        hit: bool (N,), an adversarial point seen since the last update of c.
    """

    oracle: Oracle
    x: Tensor
    y: Tensor
    target: Tensor | None
    search: ConstantSearch
    best: Best
    hit: Tensor
    generator: torch.Generator

    @classmethod
    def start(cls, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None, c0: float,
              generator: torch.Generator, dtype: torch.dtype | None = None) -> ScoreRun:
        """Every example at c0, no best point yet (constants and distances in ``dtype``)."""
        return cls(oracle, x, y, target, ConstantSearch.start(c0, len(x), x, dtype=dtype),
                   Best.start(x, dtype), torch.zeros(len(x), dtype=torch.bool, device=x.device),
                   generator)

    def next_constants(self) -> None:
        """C&W's update of c from the successes since the last one."""
        self.search.update(self.hit)
        self.hit[:] = False


def confirm(model: Model, x: Tensor, x_adv: Tensor, y: Tensor, target: Tensor | None,
            found: Tensor) -> Tensor:
    """Re-check the found examples on the whole batch (as the base will): one that was
    adversarial in a smaller batch but not here (a margin within float rounding of 0) gets
    its perturbation lengthened by 0.1%, then 0.2%, 0.4%, ... until it is."""
    for j in range(10):
        with torch.no_grad():
            lost = found & ~is_success(model(x_adv), y, target)
        if not lost.any():
            break
        x_adv[lost] = clip_box(x[lost] + (1 + 1e-3 * 2**j) * (x_adv[lost] - x[lost]))
    return x_adv
