r"""Adaptive attacks on detectors (Carlini & Wagner 2017, "not easily detected").

A detector that is evaluated only against attacks that ignore it says little. The adaptive
attacker knows the detector and its threshold :math:`\tau` and wants an input that is
misclassified and not flagged, :math:`s(x') \le \tau` on the detector's real score. It runs
the shared PGD loop (:class:`~advlab.attacks.gradient.GradientAttack`) with the step

.. math::  d = \mathbb{1}[m(x') < \kappa]\ \hat g_{cls}
           \;-\; \lambda\ \mathbb{1}[\text{misclassified}]\ \hat g_{det},
           \qquad \hat g = g / \|g\|_2

where :math:`g_{cls}` is the gradient of the classification objective (the C&W margin by
default), :math:`g_{det}` the gradient of the detector's differentiable score
(:meth:`Detector.score_torch`, or its smooth surrogate), each normalised per example, and
:math:`m` the C&W logit margin of the wrong (or target) class. This is Carlini & Wagner's
:math:`\min(L_{cls}, \kappa) - \lambda s` with three changes that make it work:

- the detector term starts once the input is misclassified: before, its gradient points back
  to the true class (the input looks like what it is), and the two terms fight;
- both gradients have unit length, so :math:`\lambda` weighs directions, whatever the
  scale of the score (a probability, a distance of 100, a surrogate on another scale than
  the real score and its threshold);
- success is judged at every iterate on the *real* detector decision
  (:meth:`DetectorAwarePGD.succeeded`, not on a surrogate and its scale): an example stops
  at the first iterate that is misclassified with margin :math:`\kappa` and not flagged
  (the loop's early stopping); one that never gets there returns its last iterate that
  evaded with a smaller margin, else its last misclassified one. The margin keeps the point
  away from the decision boundary, where a detector with random transformations, drawing
  anew, would flag it.

The wrong class the margin picks (the most likely one) is not always the one the detector
accepts: the examples that still do not evade are attacked again, targeted at the next most
likely classes (``targets``, as APGD-T's restarts; Croce & Hein 2020, arXiv:2003.01690).

The attack needs a fitted detector, so it is not in the attack registry (``get(name)`` must
build with defaults); construct it directly. To attack a defense together with its detector
(MagNet), call it on the defended model (the reformer) with the detector of the classifier.
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import Crafted, Model, is_success
from advlab.attacks.gradient import GradientAttack, GradientSettings, Probe, Source
from advlab.detectors.detector import Detector
from advlab.errors import AttackError, InputError, NotFittedError
from advlab.losses import Objective, objective
from advlab.threat import broadcast_rows

_margin = objective("margin")


class DetectorAware(Source):
    """The detector-aware gradient source: the step's direction d at x_adv (see the module
    docstring), the classifier's unit gradient until the margin reaches ``kappa``, minus
    ``lam`` times the detector's unit gradient once misclassified; and the logits there.

    Args:
        detector: a fitted detector with a differentiable score.
        lam: weight of the detector's unit gradient.
        kappa: the logit margin after which the classification term stops.
    """

    def __init__(self, detector: Detector, lam: float, kappa: float) -> None:
        self.detector, self.lam, self.kappa = detector, lam, kappa

    def __call__(self, objective: Objective, probe: Probe, x_adv: Tensor, y: Tensor,
                 target: Tensor | None, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        xg = x_adv.detach().requires_grad_(True)
        logits = probe.model(xg)
        g_cls = _unit(torch.autograd.grad(objective(logits, y, target).sum(), xg)[0])
        logits = logits.detach()
        grad = torch.where(broadcast_rows(_margin(logits, y, target) < self.kappa, xg), g_cls, 0.0)
        wrong = is_success(logits, y, target)
        if self.lam > 0 and wrong.any():
            xw = x_adv[wrong].detach().requires_grad_(True)
            (g_det,) = torch.autograd.grad(self.detector.score_torch(xw).sum(), xw)
            grad[wrong] -= self.lam * _unit(g_det)
        return grad, logits


class DetectorAwareSettings(GradientSettings):
    """:class:`~advlab.attacks.gradient.GradientSettings` and the detector's: the fitted
    detector (with a differentiable score and a threshold), lam >= 0, kappa and targets; the
    source is their :class:`DetectorAware`."""

    detector: Detector
    lam: float = 1.0
    kappa: float = 5.0
    targets: int = 2

    def check(self) -> None:
        if not isinstance(self.detector, Detector) or not self.detector.differentiable:
            raise AttackError(f"{type(self.detector).__name__} has no differentiable score "
                              "to attack")
        if self.lam < 0:
            raise InputError(f"lam must be non-negative, got {self.lam}")
        super().check()
        self.resolve("source", DetectorAware(self.detector, self.lam, self.kappa))


class DetectorAwarePGD(GradientAttack):
    """PGD against a classifier and a detector at once.

    Args:
        detector: a fitted detector with a differentiable score (``differentiable``) and its
            threshold (``detector.threshold(x_clean, fpr)``, or the copy
            ``detector.calibrated(x_clean, fpr)``): "undetected" means score <= threshold.
        lam: weight of the detector's unit gradient against the classifier's (0: the
            detector only decides when to stop).
        kappa: confidence: the logit margin of the wrong class sought before an example
            counts as done and the classification term stops (C&W's kappa).
        targets: untargeted attacks only: for the examples that did not evade, rerun
            targeted at the 2nd, 3rd, ... most likely class of x, up to this many (APGD-T's
            restarts); each keeps the first evading result.
        eps, norm, steps, alpha, random_start, restarts, loss, seed: as
            :class:`~advlab.attacks.PGD` (loss "margin" by default; "ce" and "dlr" work too).

    Returns (via the attack call): AttackResult whose ``info`` holds ``score`` (the detector
    score of each x_adv, (N,)) and ``evaded`` (misclassified and not above the threshold).

    References: Carlini & Wagner, "Adversarial examples are not easily detected: bypassing
    ten detection methods", AISec 2017, arXiv:1705.07263; Bryniarski et al., "Evading
    adversarial example detectors using orthogonal projected gradient descent", ICLR 2022,
    arXiv:2106.15023 (a term per goal, switched by the real decisions); Athalye, Carlini &
    Wagner 2018, arXiv:1802.00420 (attacks through defenses, BPDA).
    """

    Settings = DetectorAwareSettings
    positional = ("detector",)
    preset = {"steps": 100, "loss": "margin"}
    fixed = {"early_stop": True, "source": None}

    @property
    def tau(self) -> float:
        tau = self.detector.threshold_
        if tau is None:
            raise NotFittedError(
                f"DetectorAwarePGD needs the threshold of {type(self.detector).__name__}: "
                "call detector.threshold(x_clean, fpr) or pass detector.calibrated(x_clean, fpr)")
        return tau

    def init_memory(self, x: Tensor) -> dict[str, Tensor]:
        """The best iterate of each example so far and its rank: 2 evaded, 1 misclassified
        only, 0 none yet (the latest iterate of the highest rank)."""
        return {"best": x.clone(), "rank": torch.zeros(len(x), dtype=torch.long,
                                                       device=x.device)}

    def succeeded(self, x_adv: Tensor, logits: Tensor, y: Tensor, target: Tensor | None,
                  memory: dict[str, Tensor], idx: Tensor | None) -> Tensor:
        """Misclassified with margin kappa and not flagged by the real detector: the example
        stops. Every misclassified iterate is noted in ``memory``, ranked."""
        wrong = is_success(logits, y, target)
        evaded = wrong.clone()
        if wrong.any():
            evaded[wrong] = self.detector.score(x_adv[wrong]) <= self.tau
        rank = wrong.long() + evaded.long()
        rows = torch.arange(len(x_adv), device=x_adv.device) if idx is None else idx
        better = (rank > 0) & (rank >= memory["rank"][rows])
        memory["best"][rows[better]] = x_adv[better]
        memory["rank"][rows[better]] = rank[better]
        return evaded & (_margin(logits, y, target) >= self.kappa)

    def result(self, x_adv: Tensor, memory: dict[str, Tensor]) -> Tensor:
        """The best noted iterate of each example that has one, else the last iterate."""
        return torch.where(broadcast_rows(memory["rank"] > 0, x_adv), memory["best"], x_adv)

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        assert eps is not None
        tau = self.tau  # no threshold: fail before attacking
        x_adv = super().perturb(model, x, y, target, eps, generator)
        evaded, score = self._evaded(model, x_adv, y, target, tau)
        if target is None and self.targets > 0 and not evaded.all():
            with torch.no_grad():  # the other classes, most likely first (y last)
                ranked = model(x).scatter(1, y[:, None], float("-inf")).argsort(
                    1, descending=True)
            for r in range(1, min(self.targets, ranked.shape[1] - 2) + 1):
                todo = (~evaded).nonzero().squeeze(1)
                x_t = super().perturb(model, x[todo], y[todo], ranked[todo, r], eps[todo],
                                      generator)
                ok = self._evaded(model, x_t, y[todo], None, tau)[0]
                x_adv[todo[ok]], evaded[todo[ok]] = x_t[ok], True
                if evaded.all():
                    break
            evaded, score = self._evaded(model, x_adv, y, target, tau)
        return Crafted(x_adv, info={"score": score, "evaded": evaded})

    def _evaded(self, model: Model, x_adv: Tensor, y: Tensor, target: Tensor | None,
                tau: float) -> tuple[Tensor, Tensor]:
        """(misclassified and not flagged, the detector score), judged on the whole batch."""
        with torch.no_grad():
            score = self.detector.score(x_adv)
            return is_success(model(x_adv), y, target) & (score <= tau), score


def _unit(g: Tensor) -> Tensor:
    """g / ||g||_2 per example (zero rows stay zero)."""
    return g / broadcast_rows(g.flatten(1).norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny), g)
