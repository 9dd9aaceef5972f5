r"""Local intrinsic dimensionality (Ma et al. 2018).

Adversarial regions have a higher local intrinsic dimensionality than the data manifold. The
maximum-likelihood estimate of the LID of x, from the distances :math:`r_1 \le \dots \le r_k`
to its k nearest neighbours in a reference batch of clean inputs, is

.. math::  \widehat{LID}(x) = -\Big(\frac{1}{k}\sum_{i=1}^{k}
           \log\frac{r_i(x)}{r_k(x)}\Big)^{-1}

computed at every chosen layer; a logistic regression on the per-layer LIDs, trained on clean
and adversarial examples, is the detector.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from advlab.attacks.base import Attack
from advlab.detectors.detector import (
    Model,
    collect_activations,
    euclidean,
    forward_with_activations,
    parametric_layers,
)
from advlab.detectors.learned import LearnedDetector, craft, default_attacks, train_binary
from advlab.errors import InputError


def lid_mle(dist: Tensor) -> Tensor:
    """LID estimates from ascending neighbour distances N x k (self excluded) -> (N,)."""
    d = dist.clamp_min(1e-12)
    m = torch.log(d / d[:, -1:]).mean(1)
    return -1.0 / m.clamp_max(-1e-12)


class LID(LearnedDetector):
    """LID at several layers against a fixed reference batch, and a logistic regression.

    Args:
        layers: layers to estimate LID at (default: every module holding parameters).
        k: neighbours in the estimate (20 in the paper for MNIST).
        reference: size of the clean reference batch, drawn from the fitting data (the
            paper uses the current minibatch of 100; a fixed batch keeps the score
            deterministic and per-input).
        attacks, n_adv, epochs: adversarial training data and the regression (see
            :class:`~advlab.detectors.distances.FeatureDistance`).
        batch_size, seed: see :class:`~advlab.detectors.detector.Detector`.

    References: Ma et al., "Characterizing adversarial subspaces using local intrinsic
    dimensionality", ICLR 2018, arXiv:1801.02613.
    """

    supervised = True
    differentiable = True

    def __init__(self, layers: Sequence[str] | None = None, k: int = 20, *,
                 reference: int = 500, attacks: Sequence[Attack] | None = None,
                 n_adv: int = 1000, epochs: int = 500, batch_size: int = 500,
                 seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if k < 2 or reference <= k:
            raise InputError(f"need k >= 2 and reference > k, got k={k}, reference={reference}")
        self.layers = None if layers is None else list(layers)
        self.k, self.reference, self.n_adv, self.epochs = k, reference, n_adv, epochs
        self.attacks = list(attacks) if attacks is not None else default_attacks()

    def _fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
        self.layers_ = self.layers or parametric_layers(model)
        if len(x) <= self.reference + 1:
            raise InputError(f"need more than reference={self.reference} fitting inputs, "
                             f"got {len(x)}")
        gen = self.generator(torch.device("cpu"))
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        ref, rest = perm[: self.reference], perm[self.reference:]
        _, self.reference_acts_ = collect_activations(model, x[ref], self.layers_,
                                                      self.batch_size)
        if x_adv is None:
            x_adv = craft(model, x[rest], y[rest], self.attacks, self.n_adv, gen)
        clean = self.features(x[rest], model=model, _checked=True)
        adv = self.features(x_adv, model=model, _checked=True)
        self.classifier_ = train_binary(clean, adv, epochs=self.epochs, seed=self.seed)

    def _features_of(self, model: Model, x: Tensor) -> Tensor:
        _, acts = forward_with_activations(model, x, self.layers_)
        cols = []
        for name in self.layers_:
            d = euclidean(acts[name], self.reference_acts_[name])
            cols.append(lid_mle(d.topk(self.k, dim=1, largest=False).values))
        return torch.stack(cols, 1)
