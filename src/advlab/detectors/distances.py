r"""Feature distance spaces (Carrara et al. 2018/2019; the lecture's :math:`B_f(x)`).

Encode how the network behaves on an input by the distances of its activation at each layer
to the centroid of each class (computed on clean training data):

.. math::  B_f(x) = \begin{bmatrix} d(x^*_{l_1}, \bar x^{c_1}_{l_1}) & \dots &
           d(x^*_{l_n}, \bar x^{c_1}_{l_n}) \\ \vdots & \ddots & \vdots \\
           d(x^*_{l_1}, \bar x^{c_M}_{l_1}) & \dots & d(x^*_{l_n}, \bar x^{c_M}_{l_n})
           \end{bmatrix}

a classes x layers matrix. A clean input moves steadily toward the centroid of its predicted
class layer after layer; an adversarial one starts near its true class and jumps late. The
classes (rows) are ordered by the network's ranking of them (predicted class first), so the
same small learned detector serves every class; it is trained on clean and adversarial
examples (a logistic regression, or a small MLP as in Carrara et al.).
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
)
from advlab.detectors.learned import LearnedDetector, craft, default_attacks, train_binary
from advlab.errors import InputError


class FeatureDistance(LearnedDetector):
    """Distances to class centroids at several layers, fed to a learned detector.

    Args:
        layers: submodule names (e.g. ``["fc1", "fc2", "fc3"]``).
        distance: "euclidean" or "cosine".
        hidden: 0 for logistic regression, else the width of a one-hidden-layer MLP.
        attacks: attacks crafting the adversarial training examples when fit gets no x_adv
            (default :func:`~advlab.detectors.learned.default_attacks`).
        n_adv: how many of the fitting inputs are attacked to make them.
        epochs: training steps of the learned detector.
        batch_size, seed: see :class:`~advlab.detectors.detector.Detector`.

    Shape: features N x (K * len(layers)); score (N,) is the detector's logit.

    References: Carrara et al., "Adversarial examples detection in features distance spaces",
    ECCV workshops 2018; Carrara et al., "Adversarial image detection in deep neural
    networks", Multimedia Tools and Applications 2019. The lecture's :math:`B_f(x)`.
    """

    supervised = True
    differentiable = True

    def __init__(self, layers: Sequence[str], *, distance: str = "euclidean", hidden: int = 32,
                 attacks: Sequence[Attack] | None = None, n_adv: int = 1000, epochs: int = 500,
                 batch_size: int = 500, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if not layers:
            raise InputError("FeatureDistance needs at least one layer")
        if distance not in ("euclidean", "cosine"):
            raise InputError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        self.layers, self.distance, self.hidden = list(layers), distance, hidden
        self.attacks = list(attacks) if attacks is not None else default_attacks()
        self.n_adv, self.epochs = n_adv, epochs

    def _fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
        logits, acts = collect_activations(model, x, self.layers, self.batch_size)
        k = logits.shape[1]
        self.centroids_ = {}
        for name in self.layers:
            a = self._prepare(acts[name])
            counts = torch.bincount(y, minlength=k).clamp_min(1).to(a)
            sums = torch.zeros(k, a.shape[1], dtype=a.dtype, device=a.device).index_add_(0, y, a)
            self.centroids_[name] = sums / counts[:, None]
        if x_adv is None:
            x_adv = craft(model, x, y, self.attacks, self.n_adv,
                          self.generator(torch.device("cpu")))
        clean = self.features(x, model=model, _checked=True)
        adv = self.features(x_adv, model=model, _checked=True)
        self.classifier_ = train_binary(clean, adv, hidden=self.hidden, epochs=self.epochs,
                                        seed=self.seed)

    def _prepare(self, a: Tensor) -> Tensor:
        return torch.nn.functional.normalize(a, dim=1) if self.distance == "cosine" else a

    def _features_of(self, model: Model, x: Tensor) -> Tensor:
        """N x (K * layers): distances, classes in the network's ranking, layer-major."""
        logits, acts = forward_with_activations(model, x, self.layers)
        order = logits.detach().argsort(1, descending=True)
        cols = []
        for name in self.layers:
            d = euclidean(self._prepare(acts[name]), self.centroids_[name])  # N x K
            cols.append(d.gather(1, order))
        return torch.cat(cols, 1)
