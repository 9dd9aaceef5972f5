r"""Input-transformation defenses: classify a transformed input, :math:`f(t(x))`.

:class:`Transformed` puts transformations from :mod:`advlab.transforms` in front of a model
(small translation, rotation, mirror, shear, blur, Gaussian noise from the lecture; JPEG,
bit-depth reduction, median smoothing from the literature). Random transformations draw
from the defense's own generator, seeded with ``seed`` and advancing call after call (so the
same input may get different logits: a randomised defense), or from a generator given at call
time.

Evaluated naively, such a defense looks strong: the non-differentiable parts give zero or
useless gradients and the random parts make single gradients noisy. Its adaptive attack
(:meth:`Transformed.adaptive`) replaces every non-differentiable transformation by its BPDA
surrogate (exact forward, surrogate gradient) and averages gradients over the randomness
(EOT), as Athalye, Carlini & Wagner 2018 did to break such defenses.

References:
    Guo et al., "Countering adversarial images using input transformations", ICLR 2018,
    arXiv:1711.00117. Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of
    security", ICML 2018, arXiv:1802.00420. Athalye et al., "Synthesizing robust adversarial
    examples", ICML 2018, arXiv:1707.07397 (EOT).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advlab.errors import InputError
from advlab.transforms import Compose, Transform


@dataclass
class Adaptive:
    """The adaptive attack's view of a defense.

    Attributes:
        model: a differentiable surrogate of the defended model: the same forward values,
            BPDA gradients through non-differentiable parts, fresh random draws every call.
        eot_samples: how many gradients to average per step (1 for a deterministic defense).
        attack: the registry name of the attack to run against ``model`` ("pgd", or "eot-pgd"
            for a random defense).
        attack_kwargs: its suggested settings (eps is the caller's); for "eot-pgd",
            ``transform=[]`` (no extra transformation: the surrogate draws the defense's own
            randomness) and ``samples``.
        detector: a fitted detector that the defense also uses to reject inputs (MagNet), or
            None. When set, the adaptive attack is
            ``DetectorAwarePGD(detector, eps=..., steps=...)`` run on ``model`` (it is not in
            the registry, as it needs the fitted detector); success means misclassified and
            not flagged.

    Use: ``a = defended.adaptive(); attacks.get(a.attack, eps=eps, **a.attack_kwargs)(a.model,
    x, y)``; judge the adversarial images on the deployed defense itself.
    """

    model: nn.Module
    eot_samples: int
    attack: str = "pgd"
    attack_kwargs: dict[str, Any] = field(default_factory=dict)
    detector: Any = None


class Transformed(nn.Module):
    """A model behind input transformations: ``Transformed(model, [Translate(2)])(x)`` is
    ``model(Translate(2)(x))``.

    Args:
        model: the classifier, x in [0, 1] -> logits.
        transforms: a Transform or a list of them, applied in order.
        bpda: when True, non-differentiable transformations pass BPDA surrogate gradients
            (the forward values are unchanged): the attacker's differentiable copy.
        seed: seeds the defense's own generator, used when no generator is given.
        eot_samples: EOT samples the adaptive attack should average when the defense is
            random.

    Shape:
        x: N x C x H x W in [0, 1] -> logits N x K.
    """

    def __init__(self, model: nn.Module, transforms: Transform | Sequence[Transform], *,
                 bpda: bool = False, seed: int = 0, eot_samples: int = 20) -> None:
        super().__init__()
        ts = [transforms] if isinstance(transforms, Transform) else list(transforms)
        if not ts or not all(isinstance(t, Transform) for t in ts):
            raise InputError("Transformed needs a Transform or a non-empty list of Transforms "
                             "from advlab.transforms")
        if eot_samples < 1:
            raise InputError(f"eot_samples must be >= 1, got {eot_samples}")
        self.model = model
        self.transform = Compose(ts, seed=seed)
        self.training = False  # eval mode like the model it wraps; the model's mode is its own
        self.bpda, self.seed, self.eot_samples = bpda, seed, eot_samples

    @property
    def random(self) -> bool:
        """True when some transformation is random (logits may differ between calls)."""
        return self.transform.random

    @property
    def differentiable(self) -> bool:
        """True when every transformation is differentiable (BPDA is then not needed)."""
        return self.transform.differentiable

    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The transformed input t(x) (BPDA values and gradients when ``bpda``)."""
        g = generator if generator is not None else self.transform.stream(x.device)
        return self.transform.bpda(x, g) if self.bpda else self.transform(x, g)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.model(self.preprocess(x, generator))

    def reset(self) -> None:
        """Rewind the defense's own generator (the random sequence replays)."""
        self.transform.reset()

    def adaptive(self, eot_samples: int | None = None, steps: int = 100) -> Adaptive:
        """The BPDA + EOT attack surface of this defense.

        Args:
            eot_samples: gradients averaged per step (default: ``self.eot_samples`` when the
                defense is random, else 1).
            steps: suggested PGD steps.

        Returns:
            An :class:`Adaptive` holding a ``Transformed(..., bpda=True)`` copy sharing the
            model and the transformations, with its own generator seeded ``seed + 1``.
        """
        k = eot_samples or (self.eot_samples if self.random else 1)
        surrogate = Transformed(self.model, list(self.transform.transforms), bpda=True,
                                seed=self.seed + 1, eot_samples=k)
        if not self.random:
            return Adaptive(surrogate, 1, "pgd", {"steps": steps})
        # the surrogate draws the defense's randomness itself, call after call: EOT with no
        # extra transformation (transform=[]) averages gradients over k of its draws
        return Adaptive(surrogate, k, "eot-pgd", {"steps": steps, "samples": k, "transform": []})
