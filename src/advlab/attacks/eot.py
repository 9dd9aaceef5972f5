r"""Expectation over Transformation (EOT): adversarial examples robust to a distribution T.

Plain adversarial examples are fragile: a small translation or a little blur often gives
the true class back (the lecture's "extreme fragility"). EOT optimises the expected
objective over random transformations t ~ T instead of the objective at x itself,

.. math::  \max_{x'}\ \mathbb{E}_{t \sim T}\big[J(f(t(x')), y)\big]
           \quad \text{s.t. } \|x' - x\|_p \le \epsilon,

with the Monte-Carlo gradient
:math:`\nabla_{x'} \mathbb{E}_t J \approx \frac{1}{S} \sum_{s=1}^{S} \nabla_{x'} J(f(t_s(x')), y)`.
In advlab this is a gradient source, :class:`EOT`, that any
:class:`~advlab.attacks.gradient.GradientAttack` takes (``PGD(source=EOT(T))``, or
:func:`eot` on an existing attack): the attack's own loop (PGD, MI-FGSM, APGD, ...) is
unchanged. The transformations are :mod:`advlab.transforms` modules (the same the defenses
and detectors use), applied through their BPDA path so that non-differentiable ones
(JPEG, bit depth) still give a gradient; their randomness comes from the attack's generator.
This is how the lecture's 3D-printed turtle stays a rifle "under almost any viewpoint".

References:
    Athalye, Engstrom, Ilyas & Kwok, "Synthesizing robust adversarial examples", ICML 2018,
    arXiv:1707.07397.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from advlab.attacks.base import Model, register
from advlab.attacks.gradient import PGD, Autograd, GradientAttack, GradientSettings, Probe, Source
from advlab.errors import AttackError, ThreatModelError
from advlab.losses import Objective
from advlab.transforms import Transform, distribution

TransformSpec = str | Mapping[str, Any] | Sequence[Transform | str] | Transform | None

# translation, rotation, scale, blur, noise and brightness (Athalye et al.'s 2-D distribution
# plus the lecture's blur and noise), small enough that clean MNIST digits keep their class
# (a 2-pixel shift alone changes the prediction of many of them for the zoo's MLP)
DEFAULT_DISTRIBUTION: dict[str, Any] = {
    "translate": 1, "rotate": 10.0, "scale": (0.95, 1.05), "blur": (0.3, 0.6),
    "noise": 0.05, "brightness": 0.1,
}


class EOT(Source):
    r"""The EOT gradient source: :math:`\frac1S \sum_s \nabla_x J(f(t_s(x)), y)` over ``samples``
    draws of ``transform``, and the mean logits over the draws.

    The S copies are transformed and classified in one batch: row s N + i of the batch is
    example i under draw s, the draws taken by ``transform`` from the attack's generator.

    Args:
        transform: the distribution T (a :class:`advlab.transforms.Transform`).
        samples: draws S per gradient.

    Shape: x_adv N x C x H x W -> grad N x C x H x W, logits N x K.
    """

    def __init__(self, transform: Transform, samples: int = 10) -> None:
        if samples < 1:
            raise ThreatModelError(f"EOT needs samples >= 1, got {samples}")
        self.transform, self.samples = transform, samples

    def __call__(self, objective: Objective, probe: Probe, x_adv: Tensor, y: Tensor,
                 target: Tensor | None, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        if probe.generator is None:
            raise AttackError("the EOT gradient needs the attack's generator: call the attack")
        s = self.samples
        xa = x_adv.detach().requires_grad_(True)
        xt = self.transform.bpda(xa.repeat(s, *([1] * (xa.dim() - 1))), probe.generator)
        logits = probe.model(xt)
        ts = None if target is None else target.repeat(s)
        loss = objective(logits, y.repeat(s), ts).sum() / s
        (grad,) = torch.autograd.grad(loss, xa)
        return grad, logits.detach().view(s, len(xa), -1).mean(0)


def eot(attack: GradientAttack, transform: TransformSpec = None, *,
        samples: int = 10) -> GradientAttack:
    """The EOT version of a gradient attack: a copy whose gradient source is :class:`EOT` (the
    argument is untouched).

    Args:
        attack: any :class:`GradientAttack` (PGD, MIFGSM, APGD, ...) on autograd.
        transform: the distribution T: a Transform, or a spec for
            :func:`advlab.transforms.distribution`; default :data:`DEFAULT_DISTRIBUTION`.
        samples: draws S per gradient.

    Returns:
        An attack of the same class with the same settings whose gradient is the EOT average.
    """
    if not isinstance(attack, GradientAttack):
        raise AttackError(f"EOT wraps a GradientAttack, got {type(attack).__name__}")
    if not isinstance(attack.source, Autograd):
        raise AttackError(f"this attack's gradient already comes from "
                          f"{type(attack.source).__name__}")
    return attack.replace(source=EOT(_distribution(transform, attack.seed), samples))


def _distribution(transform: TransformSpec, seed: int) -> Transform:
    return distribution(DEFAULT_DISTRIBUTION if transform is None else transform, seed=seed)


class EOTSettings(GradientSettings):
    """:class:`~advlab.attacks.gradient.GradientSettings` and the distribution T with its
    draws per step; the source is their :class:`EOT`."""

    transform: TransformSpec = None
    samples: int = 10

    def check(self) -> None:
        super().check()
        self.resolve("source", EOT(_distribution(self.transform, self.seed), self.samples))


@register("eot-pgd", knowledge="white", goal="both", norm="linf", kind="iterative")
@register("eot-pgd-l2", knowledge="white", goal="both", norm="l2", kind="iterative",
          defaults={"norm": "l2"})
class EOTPGD(PGD):
    """PGD on the EOT gradient: robust adversarial examples (Athalye et al. 2018).

    Settings (:class:`EOTSettings`):
        transform: the distribution T (a Transform or a spec for
            :func:`advlab.transforms.distribution`); default :data:`DEFAULT_DISTRIBUTION`
            (translation <= 1 px, rotation <= 10 degrees, scale 0.95-1.05, blur sigma
            0.3-0.6, noise std 0.05, brightness +-0.1).
        samples: draws S per gradient step.
        early_stop: off by default: an example adversarial at x' alone is not yet robust.
        (others as :class:`~advlab.attacks.gradient.PGD`; 100 steps by default)

    References: Athalye et al., ICML 2018, arXiv:1707.07397.
    """

    Settings = EOTSettings
    preset = {"steps": 100, "early_stop": False}
    fixed = {"source": None}


def survival(model: Model, x_adv: Tensor, transform: TransformSpec = None, *,
             samples: int = 100, seed: int = 0, batch_size: int = 2000) -> Tensor:
    """Per example, the fraction of random transformations t ~ T under which the model's
    prediction on t(x_adv) is still its prediction on x_adv (the adversarial class).

    Shape: x_adv N x C x H x W -> (N,) in [0, 1].
    """
    t = _distribution(transform, seed)
    g = torch.Generator(device=x_adv.device).manual_seed(seed)
    kept = torch.zeros(len(x_adv), dtype=x_adv.dtype, device=x_adv.device)
    with torch.no_grad():
        for i in range(0, len(x_adv), batch_size):
            xb = x_adv[i:i + batch_size]
            ref = model(xb).argmax(1)
            for _ in range(samples):
                kept[i:i + batch_size] += (model(t(xb, g)).argmax(1) == ref).to(x_adv.dtype)
    return kept / samples
