r"""Feature squeezing (Xu, Evans & Qi 2018).

Squeezers shrink the input space an adversary can use (bit-depth reduction, median smoothing).
A clean input means the same squeezed or not; an adversarial one often does not. The score is
the largest L1 distance between the softmax outputs on x and on a squeezed x:

.. math::  score(x) = \max_i \| \mathrm{softmax} f(x) - \mathrm{softmax} f(s_i(x)) \|_1

The squeezers are the input transformations of :mod:`advlab.transforms` (1-bit depth and
median smoothing for MNIST, as in the paper); the differentiable surrogate for adaptive attacks
passes gradients straight through them (BPDA).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.detectors.detector import Detector, Model
from advlab.errors import InputError
from advlab.transforms import BitDepth, MedianSmoothing, Transform


def mnist_squeezers() -> dict[str, Transform]:
    """The paper's MNIST squeezers: 1-bit depth and median smoothing (3 x 3 here; advlab's
    median filter takes odd windows, the paper's best MNIST window was 2 x 2)."""
    return {"bitdepth1": BitDepth(1), "median3": MedianSmoothing(3)}


class FeatureSqueezing(Detector):
    """Max L1 distance between predictions on x and on squeezed versions of x.

    Args:
        squeezers: name -> transformation (default :func:`mnist_squeezers`).
        batch_size, seed: see :class:`~advlab.detectors.detector.Detector`.

    Shape: score (N,) in [0, 2].

    References: Xu, Evans & Qi, "Feature squeezing: detecting adversarial examples in deep
    neural networks", NDSS 2018, arXiv:1704.01155.
    """

    differentiable = True

    def __init__(self, squeezers: Mapping[str, Transform] | None = None, *,
                 batch_size: int = 500, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.squeezers = dict(squeezers) if squeezers is not None else mnist_squeezers()
        if not self.squeezers:
            raise InputError("FeatureSqueezing needs at least one squeezer")

    def _fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
        """Nothing to learn: the squeezers are fixed (the threshold is set on clean data)."""

    def distances(self, x: Tensor) -> dict[str, Tensor]:
        """name -> (N,) L1 distance for each squeezer alone."""
        model = self.check_model()
        self.check_inputs(x)
        gen = self.generator(x.device)
        with torch.no_grad():
            parts = [self._distances(model, b, gen, bpda=False) for b in x.split(self.batch_size)]
        return {name: torch.cat([p[name] for p in parts]) for name in self.squeezers}

    def _distances(self, model: Model, x: Tensor, generator: torch.Generator,
                   bpda: bool) -> dict[str, Tensor]:
        p = F.softmax(model(x), 1)
        out = {}
        for name, s in self.squeezers.items():
            xs = s.bpda(x, generator) if bpda else s(x, generator)
            out[name] = (p - F.softmax(model(xs), 1)).abs().sum(1)
        return out

    def _score(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        return torch.stack(list(self._distances(model, x, generator, False).values())).amax(0)

    def _score_torch(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        return torch.stack(list(self._distances(model, x, generator, True).values())).amax(0)
