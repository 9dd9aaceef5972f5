r"""Adaptive attacks on detectors (Carlini & Wagner 2017, "not easily detected").

A detector that is evaluated only against attacks that ignore it says little. The adaptive
attacker knows the detector and ascends

.. math::  J(x') = \min\big(L_{cls}(x'), \kappa\big) - \lambda\,
           \max\big(0,\ s(x') - \tau\big)

where :math:`L_{cls}` is the classification objective (the C&W margin by default: the wrong
class's lead over the true one), capped at :math:`\kappa` so that once the input is
misclassified with margin kappa only the detector term moves it; :math:`s` is the detector's
differentiable score (:meth:`Detector.score_torch`, or its smooth surrogate) and
:math:`\tau` its calibrated threshold (when none is set, the score itself is minimised).
Projected steps in the eps-ball as PGD; each example keeps the iterate that is misclassified
and scores lowest under the detector (first among those below tau).

The attack needs a fitted detector, so it is not in the attack registry (``get(name)`` must
build with defaults); construct it directly. To attack a defense together with its detector
(MagNet), call it on the defended model (the reformer) with the detector of the classifier.
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import Crafted, Model, is_success
from advlab.attacks.gradient import GradientAttack
from advlab.detectors.base import Detector
from advlab.errors import AttackError, InputError
from advlab.threat import _expand, project_box


class DetectorAwarePGD(GradientAttack):
    """PGD against a classifier and a detector at once.

    Args:
        detector: a fitted detector with a differentiable score (``differentiable``).
        lam: weight of the detector term.
        threshold: the detector threshold to get under; default ``detector.threshold_``
            (None there too: minimise the score).
        kappa: cap on the classification objective (confidence margin).
        eps, norm, steps, alpha, random_start, loss, seed: as :class:`~advlab.attacks.PGD`
            (loss "margin" by default; "ce" and "dlr" work too).

    Returns (via the attack call): AttackResult whose ``info`` holds ``score`` (the detector
    score of each x_adv, (N,)) and ``evaded`` (misclassified and not above the threshold).

    References: Carlini & Wagner, "Adversarial examples are not easily detected: bypassing
    ten detection methods", AISec 2017, arXiv:1705.07263; Athalye, Carlini & Wagner 2018,
    arXiv:1802.00420 (attacks through defenses, BPDA).
    """

    def __init__(self, detector: Detector, *, lam: float = 1.0, threshold: float | None = None,
                 kappa: float = 5.0, eps: float | None = None, norm: str = "linf",
                 steps: int = 100, alpha: float | None = None, random_start: bool = False,
                 loss: str = "margin", seed: int = 0) -> None:
        super().__init__(eps, norm=norm, steps=steps, alpha=alpha, random_start=random_start,
                         loss=loss, early_stop=False, seed=seed)
        if not isinstance(detector, Detector) or not detector.differentiable:
            raise AttackError(f"{type(detector).__name__} has no differentiable score to attack")
        if lam < 0:
            raise InputError(f"lam must be non-negative, got {lam}")
        self.detector, self.lam, self.threshold, self.kappa = detector, lam, threshold, kappa

    @property
    def tau(self) -> float | None:
        return self.threshold if self.threshold is not None else self.detector.threshold_

    def _terms(self, model: Model, x: Tensor, y: Tensor,
               target: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(objective J per example, logits, detector score), attached to x's graph."""
        logits = model(x)
        cls = self.objective(logits, y, target).clamp(max=self.kappa)
        score = self.detector.score_torch(x)
        excess = score if self.tau is None else (score - self.tau).clamp_min(0.0)
        return cls - self.lam * excess, logits, score

    def gradient(self, model: Model, x_adv: Tensor, y: Tensor,
                 target: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._step(model, x_adv, y, target)[:2]

    def _step(self, model: Model, x_adv: Tensor, y: Tensor,
              target: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        xg = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            j, logits, score = self._terms(model, xg, y, target)
            (grad,) = torch.autograd.grad(j.sum(), xg)
        return grad, logits.detach(), score.detach()

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        assert eps is not None
        b = self.ball
        x_adv = x.clone()
        if self.random_start:
            x_adv = project_box(x, x + b.random(x, eps, generator), eps, b)
        alpha = self.step_sizes(eps)
        best = x.clone()
        best_key = torch.full_like(eps, float("inf"))  # score; -inf offset once evaded
        for i in range(self.steps + 1):
            grad, logits, score = self._step(model, x_adv, y, target)
            key = self._key(logits, score, y, target)
            better = key < best_key
            best = torch.where(_expand(better, x), x_adv, best)
            best_key = torch.where(better, key, best_key)
            if i < self.steps:
                x_adv = project_box(x, x_adv + _expand(alpha, grad) * b.steepest(grad), eps, b)
        with torch.no_grad():
            score = self.detector.score(best)
            logits = model(best)
        evaded = is_success(logits, y, target)
        if self.tau is not None:
            evaded &= score <= self.tau
        return Crafted(best, info={"score": score, "evaded": evaded})

    def _key(self, logits: Tensor, score: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Lower is better: +inf unless misclassified; the score, minus a large offset when
        also below the threshold."""
        key = torch.where(is_success(logits, y, target), score, float("inf"))
        if self.tau is not None:
            key = torch.where(score <= self.tau, key - 1e9, key)
        return key
