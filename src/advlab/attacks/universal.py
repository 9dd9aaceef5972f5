r"""Universal adversarial perturbations: one image-agnostic perturbation v for a data set.

The algorithm of Moosavi-Dezfooli et al. loops over the data set; for every image that
:math:`x_i + v` does not fool yet, it finds the minimal extra perturbation that does
(DeepFool, the linearised step to the nearest decision boundary),

.. math::  \Delta v_i = \arg\min_r \|r\|_2 \ \text{s.t.}\ \hat k(x_i + v + r) \ne \hat k(x_i),

and adds it, projecting back onto the eps-ball: :math:`v \leftarrow P_{p,\xi}(v + \Delta v_i)`.
It stops when the fooling rate on the data set reaches :math:`1 - \delta` or after
``max_passes`` passes. The lecture: "almost like any other white-box attack, but we loop on
the input dataset during adversarial perturbation craft procedure".

advlab batches the inner step: the images of a mini-batch that v does not fool yet get their
DeepFool steps in one batched computation at the current v, and the steps are then added to v
one after the other, each followed by the projection (the original is the batch size 1 case).
Targeted: every image is pushed towards one class t, and an image counts as fooled when it is
classified as t.

References:
    Moosavi-Dezfooli, Fawzi, Fawzi & Frossard, "Universal adversarial perturbations",
    CVPR 2017, arXiv:1610.08401. DeepFool: Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016,
    arXiv:1511.04599.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, register
from advlab.attacks.deepfool import DeepFool
from advlab.attacks.settings import BallSettings, at_least, one_of, positive
from advlab.errors import LabelError, ThreatModelError
from advlab.losses import Objective, objective
from advlab.threat import Ball, ball, broadcast_rows, clip_box
from advlab.validation import check_eval_mode, check_images, check_labels

log = logging.getLogger(__name__)

DEFAULT_EPS = {"linf": 0.2, "l2": 4.0}


@dataclass
class UniversalResult:
    """A fitted universal perturbation.

    Attributes:
        delta: the perturbation, 1 x C x H x W, inside the eps-ball.
        fooling_rate: fraction of the fitting images fooled by ``clip(x + delta)``.
        passes: passes over the data made.
        target: the target class of a targeted perturbation, else None.
    """

    delta: Tensor
    fooling_rate: float
    passes: int
    target: int | None = None


def fooling_rate(model: Model, x: Tensor, delta: Tensor, y: Tensor | None = None,
                 target: int | Tensor | None = None, batch_size: int = 500) -> float:
    """Fraction of images fooled by a universal perturbation, as in the paper.

    Untargeted: :math:`\\hat k(x + v) \\ne \\hat k(x)`, with :math:`\\hat k(x)` the model's
    clean prediction (or ``y`` when given). Targeted: :math:`\\hat k(x + v) = t`.

    Shape: x N x C x H x W, delta 1 x C x H x W (or N x ...), y (N,).
    """
    fooled = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            d = delta if len(delta) == 1 else delta[i:i + batch_size]
            adv = model(clip_box(xb + d)).argmax(1)
            if target is not None:
                t = torch.as_tensor(target, device=x.device)
                t = t if t.dim() == 0 else t[i:i + batch_size]
                fooled += int((adv == t).sum())
            else:
                ref = model(xb).argmax(1) if y is None else y[i:i + batch_size]
                fooled += int((adv != ref).sum())
    return fooled / len(x)


def minimal_step(model: Model, x: Tensor, ref: Tensor, target: Tensor | None, norm: str,
                 max_iter: int = 10, overshoot: float = 0.02) -> Tensor:
    """DeepFool's minimal perturbation r for each image (batched): away from ``ref``
    (untargeted: :class:`advlab.attacks.deepfool.DeepFool` with ``ref`` as the labels), or
    to ``target`` (:func:`targeted_step`).

    Shape: x N x C x H x W, ref (N,), target (N,) or None -> r N x C x H x W.
    """
    if target is None:
        attack = DeepFool(norm=norm, overshoot=overshoot, max_iter=max_iter)
        return attack(model, x, ref).x_adv - x
    return targeted_step(model, x, target, norm, max_iter, overshoot)


def targeted_step(model: Model, x: Tensor, target: Tensor, norm: str, max_iter: int = 10,
                  overshoot: float = 0.02) -> Tensor:
    r"""DeepFool's linearisation towards one class t (the targeted inner step):

    .. math:: f = z_t - z_{\hat k}, \quad w = \nabla f, \quad
              r \mathrel{+}= \frac{|f| + 10^{-4}}{\|w\|_q^q}\, |w|^{q-1} \odot \mathrm{sign}(w)

    with :math:`\hat k` the current prediction and q the dual exponent (2 for L2, 1 for
    Linf), repeated until t is predicted, then scaled by ``1 + overshoot``. On an affine
    classifier with two classes one iteration lands exactly on the boundary.

    Shape: x N x C x H x W, target (N,) -> r N x C x H x W.
    """
    r = torch.zeros_like(x)
    for _ in range(max_iter):
        xa = clip_box(x + (1 + overshoot) * r).detach().requires_grad_(True)
        logits = model(xa)
        pred = logits.argmax(1)
        todo = pred != target
        if not todo.any():
            break
        f = (logits.gather(1, target[:, None]) - logits.gather(1, pred[:, None])).squeeze(1)
        (w,) = torch.autograd.grad(f.sum(), xa)
        flat = w.flatten(1)
        q = flat.norm(dim=1) ** 2 if norm == "l2" else flat.abs().sum(1)
        scale = (f.detach().abs() + 1e-4) / q.clamp_min(1e-12)
        step = (w if norm == "l2" else w.sign()) * broadcast_rows(scale, w)
        r = r + torch.where(broadcast_rows(todo, r), step, torch.zeros_like(r))
    return (1 + overshoot) * r


class UniversalSettings(BallSettings):
    """The settings of :class:`UniversalPerturbation` (its docstring): the ball (eps, norm),
    0 <= delta < 1, max_passes, batch_size and max_iter >= 1, step_norm linf or l2, method
    "deepfool" or "sgd", alpha > 0 or None, and the loss."""

    delta: float = 0.2
    max_passes: int = 10
    batch_size: int = 32
    step_norm: str = "l2"
    max_iter: int = 10
    overshoot: float = 0.02
    method: str = "deepfool"
    alpha: float | None = None
    loss: str = "margin"
    seed: int = 0

    def check(self) -> None:
        super().check()
        one_of("step_norm", self.step_norm, ("linf", "l2"))
        if not 0.0 <= self.delta < 1.0:
            raise ThreatModelError(f"need 0 <= delta < 1, got {self.delta}")
        at_least(1, max_passes=self.max_passes, batch_size=self.batch_size,
                 max_iter=self.max_iter)
        one_of("method", self.method, ("deepfool", "sgd"))
        positive(alpha=self.alpha)
        objective(self.loss)  # UnknownNameError for an unknown loss


class UniversalPerturbation(Attack):
    r"""Universal adversarial perturbation (Moosavi-Dezfooli et al. 2017), Linf or L2.

    Args:
        eps: radius xi of the ball; default 0.2 (linf) or 4.0 (l2).
        norm: "linf" or "l2".
        delta: stop once the fooling rate on the fitting images reaches 1 - delta (0.2 in
            the paper).
        max_passes: passes over the data at most.
        batch_size: images whose DeepFool steps are computed together at the same v.
        step_norm: the norm of the inner DeepFool step: "l2" (default), the paper's minimal
            L2 step whatever the ball, or "linf". On the zoo models the L2 steps, projected
            onto the Linf ball, fool several times as many held-out images as Linf steps
            (mnist-cnn, eps 0.3: ``benchmarks/whitebox_apgd_universal_eot.py --sections
            universal``, figures in
            benchmarks/results/whitebox_apgd_universal_eot-universal.json).
        max_iter: DeepFool iterations per step.
        overshoot: DeepFool's overshoot (0.02).
        method: "deepfool" (the paper's Algorithm 1) or "sgd": projected stochastic
            gradient ascent of the mean loss over mini-batches,
            :math:`v \leftarrow P_{p,\xi}(v + \alpha\, d(\nabla_v \frac1B \sum_i
            J(f(x_i + v), \hat k(x_i))))` (Shafahi et al. 2020), markedly stronger on
            small models (see benchmarks/whitebox_apgd_universal_eot.py).
        alpha: the "sgd" step size; default eps / 10.
        loss: the "sgd" objective, "margin" (C&W's, better than "ce" here) or "ce"; the
            targeted versions when targeted.
        seed: seeds the order in which images are visited.

    ``fit(model, x, y, target)`` returns a :class:`UniversalResult`; calling the attack fits
    a perturbation on the batch and applies it (one perturbation per target class for a
    targeted call; with per-example eps the perturbation is fitted at the largest radius and
    projected onto each example's ball). ``info["delta"]`` holds the perturbation (a dict
    target -> perturbation for a targeted call).

    References: Moosavi-Dezfooli et al., CVPR 2017, arXiv:1610.08401 (Algorithm 1).
    "sgd": Shafahi, Najibi, Xu, Dickerson, Davis & Goldstein, "Universal adversarial
    training", AAAI 2020, arXiv:1811.11304.
    """

    Settings = UniversalSettings

    @property
    def objective(self) -> Objective:
        """The ascent objective of ``loss`` (the "sgd" method's)."""
        return objective(self.loss)

    def fit(self, model: Model, x: Tensor, y: Tensor | None = None, target: int | None = None,
            *, eps: float | None = None, generator: torch.Generator | None = None
            ) -> UniversalResult:
        """Fit one perturbation on the images x.

        Args:
            model: the classifier (eval mode).
            x: images in [0, 1], N x C x H x W.
            y: the labels to move away from (untargeted); default the model's predictions.
            target: a class index for a targeted perturbation.
            eps: radius overriding ``self.eps``.
            generator: randomness for the visiting order; default seeded with ``self.seed``.

        Returns:
            UniversalResult with delta (1 x C x H x W) and the fooling rate on x.
        """
        check_images(x)
        check_eval_mode(model)
        radius = float(self.eps if eps is None else eps)
        if radius < 0:
            raise ThreatModelError(f"eps must be non-negative, got {radius}")
        with torch.no_grad():
            clean = model(x).argmax(1)
        num_classes = self._classes(model, x)
        ref = clean if y is None else y.to(x.device)
        check_labels(ref, len(x), num_classes)
        t = None
        if target is not None:
            if not 0 <= int(target) < num_classes:
                raise LabelError(f"target class must lie in [0, {num_classes}), got {target}")
            t = torch.full_like(ref, int(target))
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        v, passes = self._fit(model, x.detach(), ref, t, radius, generator)
        rate = fooling_rate(model, x, v, ref if t is None else None, t)
        return UniversalResult(v, rate, passes, None if t is None else int(target))

    @staticmethod
    def _classes(model: Model, x: Tensor) -> int:
        with torch.no_grad():
            return model(x[:1]).shape[1]

    def _fit(self, model: Model, x: Tensor, ref: Tensor, target: Tensor | None, eps: float,
             generator: torch.Generator) -> tuple[Tensor, int]:
        b = ball(self.norm)
        e = torch.full((1,), eps, dtype=x.dtype, device=x.device)
        v = torch.zeros_like(x[:1])
        passes = 0
        if eps == 0:
            return v, passes
        for passes in range(1, self.max_passes + 1):
            order = torch.randperm(len(x), generator=generator, device=x.device)
            visit = self._visit if self.method == "deepfool" else self._sgd_step
            for i in range(0, len(x), self.batch_size):
                idx = order[i:i + self.batch_size]
                v = visit(model, x[idx], ref[idx], None if target is None else target[idx],
                          v, e, b)
            rate = fooling_rate(model, x, v, ref if target is None else None, target)
            log.debug("universal pass %d: fooling rate %.3f", passes, rate)
            if rate >= 1 - self.delta:
                break
        return v, passes

    def _visit(self, model: Model, xb: Tensor, ref: Tensor, target: Tensor | None, v: Tensor,
               e: Tensor, b: Ball) -> Tensor:
        """One mini-batch: DeepFool steps for the images v does not fool, added in turn."""
        xv = clip_box(xb + v)
        with torch.no_grad():
            pred = model(xv).argmax(1)
        need = pred == ref if target is None else pred != target
        if not need.any():
            return v
        r = minimal_step(model, xv[need], ref[need], None if target is None else target[need],
                         self.step_norm, self.max_iter, self.overshoot)
        for ri in r:
            v = b.project(v + ri[None], e)
        return v

    def _sgd_step(self, model: Model, xb: Tensor, ref: Tensor, target: Tensor | None,
                  v: Tensor, e: Tensor, b: Ball) -> Tensor:
        """One projected gradient step on the mini-batch's mean objective ("sgd")."""
        va = v.detach().requires_grad_(True)
        loss = self.objective(model(clip_box(xb + va)), ref, target).mean()
        (grad,) = torch.autograd.grad(loss, va)
        alpha = e / 10 if self.alpha is None else torch.full_like(e, self.alpha)
        return b.project(v + broadcast_rows(alpha, v) * b.steepest(grad), e)

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        assert eps is not None
        b = ball(self.norm)
        e_max = float(eps.max())
        if target is None:
            v = self.fit(model, x, y, eps=e_max, generator=generator).delta
            return Crafted(clip_box(x + b.project(v.expand_as(x), eps)), info={"delta": v})
        x_adv, deltas = x.clone(), {}
        for t in target.unique().tolist():
            rows = (target == t).nonzero().squeeze(1)
            v = self.fit(model, x[rows], y[rows], target=t, eps=e_max, generator=generator).delta
            x_adv[rows] = clip_box(x[rows] + b.project(v.expand(len(rows), -1, -1, -1),
                                                       eps[rows]))
            deltas[t] = v
        return Crafted(x_adv, info={"delta": deltas})


@register("universal", knowledge="white", goal="both", norm="linf", kind="iterative")
@register("universal-l2", knowledge="white", goal="both", norm="l2", kind="iterative",
          defaults={"norm": "l2"})
class _RegisteredUniversal(UniversalPerturbation):
    """Universal perturbation, Linf and L2 (see :class:`UniversalPerturbation`)."""
