r"""The gradient family, sharing one loop: FGSM, BIM, PGD (Linf, L2, L1) and MI-FGSM.

One step of every member, for a norm ball B and step size alpha:

.. math::  x^{t+1} = \Pi_{S(x)}\big(x^t + \alpha\, d(\nabla_x J(x^t))\big)

where :math:`J` is the attacker's objective (the loss of the true label, ascended; or the
loss of the target, descended), :math:`d` the steepest-ascent direction of the ball (sign for
Linf, :math:`g/\|g\|_2` for L2) and :math:`\Pi_{S(x)}` the projection onto the eps-ball
intersected with the pixel box. FGSM is one step of size eps from x; BIM many small steps;
PGD adds a random start and restarts; MI-FGSM accumulates a momentum of L1-normalised
gradients.

Where :math:`\nabla_x J` comes from is the attack's *gradient source* (:class:`Source`):
autograd on the model (the default), the expectation over transformations
(:class:`~advlab.attacks.eot.EOT`), a zeroth-order estimate from scores only (NES and
Bandits, :mod:`advlab.attacks.blackbox.estimate`), or a step that also evades a detector
(:class:`~advlab.detectors.adaptive.DetectorAware`). The loop is the same for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, is_success, logits_and_grad, register
from advlab.attacks.settings import BallSettings, at_least, one_of, positive
from advlab.losses import OBJECTIVES, Objective, objective
from advlab.threat import DEFAULT_EPS, Box, Region, broadcast_rows, region


@dataclass
class Probe:
    """What the loop queries during one attack: the model (or the oracle in front of it), the
    attack's generator, and the source's per-run state (never stored on the attack)."""

    model: Model
    generator: torch.Generator | None
    memory: dict[str, Any] = field(default_factory=dict)
    #: the loop's current run, for sources that look where it goes (NI's look-ahead): its
    #: memory (:meth:`GradientAttack.init_memory`: a momentum, ...) with ``eps`` (N,) and
    #: ``alpha`` (N x 1 x ...), batch-sized
    run: dict[str, Tensor] = field(default_factory=dict)


class Source:
    """A gradient source: :math:`\nabla_x J` at the iterate (and the model's scores there, for
    early stopping).

    ``prepare`` makes the :class:`Probe` of a run, ``__call__`` gives (gradient, logits) for
    the rows ``idx`` of the batch (None: all), ``finish`` the attack's output. Settings live
    on the source, per-run state in the probe.
    """

    def prepare(self, model: Model, x: Tensor, generator: torch.Generator) -> Probe:
        return Probe(model, generator)

    def __call__(self, objective: Objective, probe: Probe, x_adv: Tensor, y: Tensor,
                 target: Tensor | None, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def finish(self, probe: Probe, x_adv: Tensor) -> Tensor | Crafted:
        """The attack's output from its final iterate (query counts, for estimators)."""
        return x_adv

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Autograd(Source):
    """White-box: autograd on a fresh leaf, never ``backward()`` (parameters' .grad
    untouched)."""

    def __call__(self, objective: Objective, probe: Probe, x_adv: Tensor, y: Tensor,
                 target: Tensor | None, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        logits, grad = logits_and_grad(
            probe.model, x_adv,
            lambda z, rows: objective(z, y[rows], None if target is None else target[rows]))
        return grad, logits


AUTOGRAD = Autograd()


class GradientSettings(BallSettings):
    """The settings of the gradient family (FGSM, BIM, PGD, MI-FGSM, APGD, the transfer,
    EOT, score-based and detector-aware attacks), written once.

    Attributes:
        eps: radius of the ball (pixel space); default 0.3 (linf), 2.0 (l2), 10.0 (l1).
        norm: "linf", "l2" or "l1" (``norms``: those a member supports).
        steps: number of gradient steps.
        alpha: step size; default 2.5 * eps / steps (Madry et al.), per example.
        random_start: start from a uniform point of the ball instead of x.
        restarts: runs from new random starts for the examples not yet fooled.
        loss: "ce", "margin" (C&W) or "dlr" (``losses``: those a member supports).
        early_stop: stop moving an example once it is adversarial (does not change success).
        seed: seeds the random starts.
        source: where the gradient comes from (default: autograd on the model).
    """

    losses: ClassVar[tuple[str, ...]] = tuple(OBJECTIVES)

    steps: int = 10
    alpha: float | None = None
    random_start: bool = False
    restarts: int = 1
    loss: str = "ce"
    early_stop: bool = True
    seed: int = 0
    source: Source | None = None

    def check(self) -> None:
        one_of("norm", self.norm, self.norms)
        objective(self.loss)  # UnknownNameError for a loss no attack knows
        one_of("loss", self.loss, self.losses)
        at_least(1, steps=self.steps, restarts=self.restarts)
        positive(alpha=self.alpha)
        if self.eps is None:
            self.resolve("eps", DEFAULT_EPS[self.norm])
        if self.source is None:
            self.resolve("source", AUTOGRAD)
        at_least(0, eps=self.eps)


class GradientAttack(Attack):
    """The shared loop: random start, gradient, steepest direction, step, project, clip.

    Settings: :class:`GradientSettings` (eps, norm, steps, alpha, random_start, restarts,
    loss, early_stop, seed, source); a member changes their defaults (``preset``), leaves
    some out (``fixed``) or adds its own (a subclass of :class:`GradientSettings`).
    """

    Settings = GradientSettings
    projects = True  # every iterate is projected onto S(x), the random start included

    @property
    def objective(self) -> Objective:
        """The ascent objective of ``loss``."""
        return objective(self.loss)

    # -- the pieces a subclass may replace ------------------------------------------------

    def gradient(self, model: Model, x_adv: Tensor, y: Tensor, target: Tensor | None,
                 idx: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The source's gradient of the objective at x_adv on ``model``, and the logits there
        (for loops other than :meth:`perturb`'s, such as APGD's).

        ``idx`` holds the batch indices of the rows of ``x_adv`` (None: the whole batch);
        ``generator`` is the attack's, for gradients that sample (EOT).
        """
        return self.source(self.objective, Probe(model, generator), x_adv, y, target, idx)

    def succeeded(self, x_adv: Tensor, logits: Tensor, y: Tensor, target: Tensor | None,
                  memory: dict[str, Tensor], idx: Tensor | None) -> Tensor:
        """bool (N,): the rows of x_adv (the model's logits there) that reach the goal, for
        early stopping (they freeze) and restarts (they are not rerun). Misclassified (or on
        target) by default; an attack with a further goal (evading a detector) narrows it,
        and may note iterates in ``memory`` (rows ``idx`` of the batch, None: all)."""
        return is_success(logits, y, target)

    def init_memory(self, x: Tensor) -> dict[str, Tensor]:
        """Per-run state of :meth:`direction` and :meth:`succeeded` (for instance a
        momentum), batch-sized."""
        return {}

    def result(self, x_adv: Tensor, memory: dict[str, Tensor]) -> Tensor:
        """A run's output from its last iterate and its memory: the last iterate."""
        return x_adv

    def direction(self, grad: Tensor, memory: dict[str, Tensor], idx: Tensor | None) -> Tensor:
        """The step direction from the gradient (steepest ascent of the ball), a new tensor:
        the loop takes the step in its storage.

        ``idx`` holds the batch indices of the rows of ``grad`` (None: the whole batch)."""
        return self.ball.steepest(grad)

    def step_sizes(self, eps: Tensor) -> Tensor:
        """Per-example step size alpha."""
        if self.alpha is not None:
            return torch.full_like(eps, self.alpha)
        return 2.5 * eps / self.steps

    def feasible_set(self, x: Tensor, eps: Tensor) -> Region:
        """S(x), the eps-ball around x within the pixel box, onto which every iterate is
        projected."""
        return region(x, eps, self.ball)

    # -- the loop -------------------------------------------------------------------------

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Tensor | Crafted:
        assert eps is not None  # the gradient family is always bounded
        probe = self.source.prepare(model, x, generator)
        if self.restarts == 1:
            return self.source.finish(probe, self._run(probe, x, y, target, eps)[0])
        best, best_score = x.clone(), torch.full_like(eps, float("-inf"))
        for _ in range(self.restarts):
            todo = (best_score < float("inf")).nonzero().squeeze(1)  # not yet fooled
            if len(todo) == 0:
                break
            t = None if target is None else target[todo]
            x_run, score = self._run(probe, x[todo], y[todo], t, eps[todo])
            better = score > best_score[todo]
            best[todo] = torch.where(broadcast_rows(better, x_run), x_run, best[todo])
            best_score[todo] = torch.maximum(score, best_score[todo])
        return self.source.finish(probe, best)

    def _run(self, probe: Probe, x: Tensor, y: Tensor, target: Tensor | None,
             eps: Tensor) -> tuple[Tensor, Tensor]:
        """One run from x (or a random start). Returns x_adv and, when restarts are on, a
        score per example: +inf if adversarial, else the objective."""
        b = self.ball
        feasible = self.feasible_set(x, eps)
        x_adv = feasible.project(x + b.random(x, eps, probe.generator)) if self.random_start \
            else x
        alpha = broadcast_rows(self.step_sizes(eps), x)
        memory = probe.run = {**self.init_memory(x), "eps": eps, "alpha": alpha}
        active: Tensor | None = None  # indices still attacked; None means all
        for _ in range(self.steps):
            xs, ys, ts = _take(active, x_adv, y, target)
            grad, logits = self.source(self.objective, probe, xs, ys, ts, active)
            if self.early_stop:
                keep = ~self.succeeded(xs, logits, ys, ts, memory, active)
                if not keep.all():
                    active = _narrow(active, keep, len(x))
                    if len(active) == 0:
                        break
                    xs, ys, ts = _take(active, x_adv, y, target)
                    grad = grad[keep]
            d = self.direction(grad, memory, active)
            a = alpha if active is None else alpha[active]
            x_new = feasible.project_(torch.addcmul(xs, a, d, out=d), active)  # x + alpha d
            if active is None:
                x_adv = x_new
            else:
                if x_adv is x:  # rows stopped at the first step: never write into x
                    x_adv = x.clone()
                x_adv[active] = x_new
        x_adv = self.result(x_adv, memory)
        if self.restarts == 1:
            return x_adv, eps
        with torch.no_grad():
            logits = probe.model(x_adv)
        score = self.objective(logits, y, target)
        done = self.succeeded(x_adv, logits, y, target, memory, None)
        return x_adv, torch.where(done, float("inf"), score)


def _take(idx: Tensor | None, x: Tensor, y: Tensor,
          target: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    if idx is None:
        return x, y, target
    return x[idx], y[idx], None if target is None else target[idx]


def _narrow(active: Tensor | None, keep: Tensor, n: int) -> Tensor:
    base = torch.arange(n, device=keep.device) if active is None else active
    return base[keep]


@register("fgsm", knowledge="white", goal="both", norm="linf", kind="one-shot")
class FGSM(GradientAttack):
    r"""Fast Gradient Sign Method: :math:`x' = x + \epsilon\,\mathrm{sign}(\nabla_x J(x, t_{true}))`
    (untargeted), :math:`x' = x - \epsilon\,\mathrm{sign}(\nabla_x J(x, t_{adv}))` (targeted).

    Settings: eps, norm, loss, seed, source (:class:`GradientSettings`).

    References: Goodfellow, Shlens & Szegedy, "Explaining and harnessing adversarial
    examples", ICLR 2015, arXiv:1412.6572.
    """

    fixed = {"steps": 1, "alpha": None, "random_start": False, "restarts": 1,
             "early_stop": False}

    def step_sizes(self, eps: Tensor) -> Tensor:
        return eps

    def feasible_set(self, x: Tensor, eps: Tensor) -> Region:
        r"""The one step, of size eps along a unit-norm direction from x, stays in the ball:
        only the pixel box binds, :math:`x' = \mathrm{clip}_{[0,1]}(x + \epsilon\,d)`."""
        return Box(x, eps, self.ball)


@register("bim", knowledge="white", goal="both", norm="linf", kind="iterative")
class BIM(GradientAttack):
    r"""Basic Iterative Method (iterative FGSM): steps of size alpha from x, each followed by
    the projection onto the eps-ball and the box, :math:`x^{t+1} = \mathrm{Clip}_{x,\epsilon}
    (x^t + \alpha\,\mathrm{sign}(\nabla_x J(x^t, t_{true})))`.

    Settings: eps, norm, steps (10), alpha, loss, early_stop, seed, source
    (:class:`GradientSettings`).

    References: Kurakin, Goodfellow & Bengio, "Adversarial examples in the physical world",
    ICLR workshop 2017, arXiv:1607.02533.
    """

    fixed = {"random_start": False, "restarts": 1}


@register("pgd", knowledge="white", goal="both", norm="linf", kind="iterative")
@register("pgd-l2", knowledge="white", goal="both", norm="l2", kind="iterative",
          defaults={"norm": "l2"})
@register("pgd-l1", knowledge="white", goal="both", norm="l1", kind="iterative",
          defaults={"norm": "l1"})
class PGD(GradientAttack):
    r"""Projected Gradient Descent: BIM from a uniformly random start inside the ball, with
    restarts keeping the strongest result per example. Linf, L2 and L1 balls.

    Settings: all of :class:`GradientSettings`, with 40 steps and the random start on.

    References: Madry et al., "Towards deep learning models resistant to adversarial
    attacks", ICLR 2018, arXiv:1706.06083. L1 steps: Tramer & Boneh 2019, arXiv:1904.13000.
    """

    preset = {"steps": 40, "random_start": True}


class MomentumSettings(GradientSettings):
    r""":class:`GradientSettings` and the momentum's decay :math:`\mu` (>= 0)."""

    decay: float = 1.0

    def check(self) -> None:
        super().check()
        at_least(0, decay=self.decay)


@register("mifgsm", knowledge="white", goal="both", norm="linf", kind="iterative")
class MIFGSM(GradientAttack):
    r"""Momentum Iterative FGSM: :math:`g^{t+1} = \mu g^t + \nabla_x J / \|\nabla_x J\|_1`,
    :math:`x^{t+1} = \Pi(x^t + \alpha\,\mathrm{sign}(g^{t+1}))`, with alpha = eps / steps.

    Settings: eps, norm, steps (10), decay (:math:`\mu`, 1.0), loss, early_stop, seed, source
    (:class:`MomentumSettings`).

    References: Dong et al., "Boosting adversarial attacks with momentum", CVPR 2018,
    arXiv:1710.06081.
    """

    Settings = MomentumSettings
    fixed = {"alpha": None, "random_start": False, "restarts": 1}

    def step_sizes(self, eps: Tensor) -> Tensor:
        return eps / self.steps

    def init_memory(self, x: Tensor) -> dict[str, Tensor]:
        return {"momentum": torch.zeros_like(x)}

    def direction(self, grad: Tensor, memory: dict[str, Tensor], idx: Tensor | None) -> Tensor:
        g = grad / broadcast_rows(grad.flatten(1).abs().sum(1).clamp_min(1e-12), grad)
        m = memory["momentum"]
        if idx is None:
            m.mul_(self.decay).add_(g)
            return self.ball.steepest(m)
        m[idx] = self.decay * m[idx] + g
        return self.ball.steepest(m[idx])
