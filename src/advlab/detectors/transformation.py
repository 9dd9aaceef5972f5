r"""The lecture's fragility test: adversarial examples lose their power under small
transformations, clean images do not. Plus the defense perturbation against robust examples.

For a transformation T (translation, rotation, mirror, shear, blur, noise), compare the
network's output on x with its output on T(x):

- ``measure="label"``: does the predicted label change? (fraction over ``samples`` draws)
- ``measure="kl"``: :math:`KL(\mathrm{softmax} f(x) \,\|\, \mathrm{softmax} f(T(x)))`
- ``measure="l1"``: :math:`\|\mathrm{softmax} f(x) - \mathrm{softmax} f(T(x))\|_1`

The transformations are combined by voting: with ``combine="vote"`` each transformation (and
each random draw) votes "adversarial" when the label changes, and the score is the fraction of
votes (a majority vote flags at 0.5); ``combine="mean"`` averages the per-transformation
scores, each divided by its clean 95th percentile measured at fit; or one transformation's
name uses that transformation alone.

Robust adversarial examples (EOT; Athalye et al. 2018, arXiv:1707.07397) survive the
transformations and evade the test. The **defense perturbation** (Nesti, Biondi & Buttazzo,
arXiv:2101.11466) restores it: before transforming, the input under test is moved a small
step :math:`\delta_{def}` (Linf <= eps) that lowers the probability of its own predicted class,
averaged over the transformations,

.. math::  \delta_{def} = \arg\max_{\|\delta\|_\infty \le \epsilon}\
           \mathbb{E}_T\, J(f(T(x + \delta)), \hat y), \qquad \hat y = \arg\max f(x)

(a few signed-gradient steps). A robust adversarial example sits in a region of the target
class that is robust to T but shallow: the small step takes it out, so f(T(x + delta))
no longer agrees with f(x). A clean image is deep inside its class: it stays. The test then
compares f(x) with f(T(x + delta_def)).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.detectors.detector import Detector, Model
from advlab.errors import InputError, UnknownNameError
from advlab.threat import ball as norm_ball
from advlab.threat import project_box
from advlab.transforms import LECTURE, Transform, distribution

MEASURES = ("label", "kl", "l1")


def lecture_transforms(seed: int = 0) -> dict[str, Transform]:
    """The lecture's six transformations, random, with :data:`advlab.transforms.LECTURE`'s
    ranges (translation <= 2 px, rotation <= 15 deg, mirror p=0.5, shear <= 0.2, blur sigma
    in [0.5, 1], noise std 0.1)."""
    return {name: distribution({name: value}, seed=seed).transforms[0]
            for name, value in LECTURE.items()}


def divergence(p_ref: Tensor, logits: Tensor, measure: str) -> Tensor:
    """Per-example divergence between reference probabilities and a model output (N,)."""
    if measure == "label":
        return (logits.argmax(1) != p_ref.argmax(1)).to(logits.dtype)
    logp = F.log_softmax(logits, 1)
    if measure == "kl":
        return (p_ref * (p_ref.clamp_min(1e-12).log() - logp)).sum(1)
    return (p_ref - logp.exp()).abs().sum(1)


class DefensePerturbation:
    r"""The defender's small perturbation that removes the robustness of robust adversarial
    examples (see the module docstring).

    Args:
        eps: Linf radius of the defense perturbation (pixel space).
        steps: signed-gradient steps of size ``2.5 eps / steps``.
        transforms: the transformations to average the gradient over (EOT); None: the
            gradient at x only.
        samples: draws of the transformations per step.

    References: Nesti, Biondi & Buttazzo, "Detecting adversarial examples by input
    transformations, defense perturbations, and voting", IEEE TNNLS 2021, arXiv:2101.11466.
    """

    def __init__(self, eps: float = 0.1, steps: int = 5, *,
                 transforms: Mapping[str, Transform] | None = None, samples: int = 1) -> None:
        if eps < 0 or steps < 1 or samples < 1:
            raise InputError(f"need eps >= 0, steps >= 1, samples >= 1; got {eps}, {steps}, "
                             f"{samples}")
        self.eps, self.steps, self.samples = eps, steps, samples
        self.transforms = dict(transforms or {})

    def __call__(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        """x + delta_def, in [0, 1]. Gradients w.r.t. a detached copy of x only."""
        b = norm_ball("linf")
        eps = torch.full((len(x),), float(self.eps), dtype=x.dtype, device=x.device)
        with torch.no_grad():
            y_hat = model(x).argmax(1)
        x_def = x.detach().clone()
        for _ in range(self.steps):
            xd = x_def.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = sum(F.cross_entropy(model(t(xd, generator)), y_hat, reduction="sum")
                           for t in self.transforms.values() for _ in range(self.samples)) \
                    if self.transforms else F.cross_entropy(model(xd), y_hat, reduction="sum")
                (g,) = torch.autograd.grad(loss, xd)
            x_def = project_box(x, x_def + 2.5 * self.eps / self.steps * b.steepest(g), eps, b)
        return x_def.detach()

    def __repr__(self) -> str:
        return (f"DefensePerturbation(eps={self.eps}, steps={self.steps}, "
                f"transforms={list(self.transforms)}, samples={self.samples})")


class TransformationDetector(Detector):
    """The fragility test: compare f(x) with f(T(x)) for each transformation T; vote.

    Args:
        transforms: name -> transformation module (:mod:`advlab.transforms`); default the
            lecture's six (:func:`lecture_transforms`).
        measure: "label", "kl" or "l1" (see the module docstring).
        combine: "vote" (fraction of transformations and draws that change the label),
            "mean" (mean of per-transformation scores over their clean 95th percentile), or
            the name of one transformation.
        samples: draws per random transformation.
        defense: a :class:`DefensePerturbation` applied to the input before transforming.
        fit_size: at most this many fitting inputs (a seeded subset) measure the clean 95th
            percentiles (the only thing fit learns).
        batch_size, seed: see :class:`~advlab.detectors.detector.Detector`.

    Shape: score x N x C x H x W -> (N,).

    References: the lecture ("Input transformations", "Adversarial detection"); Nesti,
    Biondi & Buttazzo, arXiv:2101.11466.
    """

    differentiable = True

    def __init__(self, transforms: Mapping[str, Transform] | None = None, *,
                 measure: str = "kl", combine: str = "vote", samples: int = 4,
                 defense: DefensePerturbation | None = None, fit_size: int = 1000,
                 batch_size: int = 500, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.transforms = dict(transforms) if transforms is not None else \
            lecture_transforms(seed)
        if not self.transforms:
            raise InputError("TransformationDetector needs at least one transformation")
        if measure not in MEASURES:
            raise UnknownNameError("measure", measure, list(MEASURES))
        if combine not in ("vote", "mean", *self.transforms):
            raise UnknownNameError("combination", combine, ["vote", "mean", *self.transforms])
        if samples < 1:
            raise InputError(f"samples must be >= 1, got {samples}")
        if fit_size < 1:
            raise InputError(f"fit_size must be >= 1, got {fit_size}")
        self.measure, self.combine, self.samples, self.defense = measure, combine, samples, \
            defense
        self.fit_size = fit_size

    def _fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
        if len(x) > self.fit_size:
            pick = torch.randperm(len(x), generator=self.generator(torch.device("cpu")))
            x = x[pick[: self.fit_size].to(x.device)]
        per = self.per_transform_scores(x, model=model, _checked=True)
        self.scale_ = {name: float(s.quantile(0.95).clamp_min(1e-6)) for name, s in per.items()}

    def _draws(self, model: Model, x: Tensor, generator: torch.Generator,
               measure: str) -> dict[str, Tensor]:
        """name -> (samples x N) divergences between f(x) and f(T(x + delta_def))."""
        with torch.no_grad():
            p_ref = F.softmax(model(x), 1)
        x_test = self.defense(model, x, generator) if self.defense is not None else x
        out = {}
        for name, t in self.transforms.items():
            draws = self.samples if t.random else 1
            out[name] = torch.stack([divergence(p_ref, model(t(x_test, generator)), measure)
                                     for _ in range(draws)])
        return out

    def per_transform_scores(self, x: Tensor, model: Model | None = None, *,
                             _checked: bool = False) -> dict[str, Tensor]:
        """name -> (N,) score of each transformation alone (mean over its draws)."""
        fitted = model if _checked else self.check_model(model)
        if not _checked:
            self.check_inputs(x)
        gen = self.generator(x.device)
        parts: dict[str, list[Tensor]] = {name: [] for name in self.transforms}
        for b in x.detach().split(self.batch_size):
            with torch.no_grad():
                for name, d in self._draws(fitted, b, gen, self.measure).items():
                    parts[name].append(d.mean(0))
        return {name: torch.cat(v) for name, v in parts.items()}

    def _combine(self, draws: dict[str, Tensor], measure: str) -> Tensor:
        if self.combine == "vote":
            votes = torch.cat([d if measure == "label" else (d > self.scale_[n]).to(d.dtype)
                               for n, d in draws.items()])
            return votes.mean(0)
        if self.combine == "mean":
            return torch.stack([d.mean(0) / self.scale_[n] for n, d in draws.items()]).mean(0)
        return draws[self.combine].mean(0)

    def _score(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        return self._combine(self._draws(model, x, generator, self.measure), self.measure)

    def _score_torch(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        """Surrogate: the mean KL over transformations and draws (label changes are not
        differentiable); the defense perturbation is treated as a constant shift (BPDA)."""
        p_ref = F.softmax(model(x), 1)
        x_test = x
        if self.defense is not None:
            x_test = x + (self.defense(model, x.detach(), generator) - x).detach()
        kl = [divergence(p_ref, model(t(x_test, generator)), "kl")
              for t in self.transforms.values() for _ in range(self.samples if t.random else 1)]
        return torch.stack(kl).mean(0)
