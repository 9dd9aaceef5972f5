r"""Mahalanobis distance to class-conditional Gaussians (Lee et al. 2018).

At each chosen layer l, fit class means :math:`\mu_{l,c}` and one shared covariance
:math:`\Sigma_l` to the clean training features (convolutional maps are averaged over space);
the confidence of an input is its closeness to the nearest class Gaussian,

.. math::  M_l(x) = \max_c\ -(f_l(x) - \mu_{l,c})^\top \Sigma_l^{-1} (f_l(x) - \mu_{l,c})

optionally after the paper's input pre-processing :math:`\hat x = x + \epsilon\,
\mathrm{sign}\,\nabla_x M_l(x)` (a small step that raises the confidence, more for clean
inputs than for adversarial ones). A logistic regression on the per-layer confidences, trained
on clean and adversarial examples, is the detector (the paper's feature ensemble).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from advlab.attacks.base import Attack
from advlab.detectors.detector import Detector, Model, batched, forward_with_activations
from advlab.detectors.learned import craft, default_attacks, train_binary
from advlab.errors import InputError
from advlab.threat import clip_box


def _pool(a: Tensor, shape: torch.Size) -> Tensor:
    """Average a convolutional map N x C x H x W over space; flatten anything else."""
    return a.view(shape).mean((2, 3)) if len(shape) == 4 else a


class Mahalanobis(Detector):
    """Per-layer Mahalanobis confidences and a logistic regression over layers.

    Args:
        layers: submodule names (e.g. the penultimate layer, or every layer).
        noise: the input pre-processing step eps (0 disables it).
        attacks, n_adv, epochs: adversarial training data and the regression (see
            :class:`~advlab.detectors.distances.FeatureDistance`).
        batch_size, seed: see :class:`~advlab.detectors.detector.Detector`.

    References: Lee, Lee, Lee & Shin, "A simple unified framework for detecting
    out-of-distribution samples and adversarial attacks", NeurIPS 2018, arXiv:1807.03888.
    """

    supervised = True
    differentiable = True

    def __init__(self, layers: Sequence[str], *, noise: float = 0.0,
                 attacks: Sequence[Attack] | None = None, n_adv: int = 1000,
                 epochs: int = 500, batch_size: int = 500, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if not layers:
            raise InputError("Mahalanobis needs at least one layer")
        if noise < 0:
            raise InputError(f"noise must be non-negative, got {noise}")
        self.layers, self.noise, self.n_adv, self.epochs = list(layers), noise, n_adv, epochs
        self.attacks = list(attacks) if attacks is not None else default_attacks()

    def _layer_features(self, model: Model, x: Tensor) -> dict[str, Tensor]:
        shapes: dict[str, torch.Size] = {}
        hooks = []
        for name in self.layers:  # record unflattened shapes to pool conv maps over space
            m = model.get_submodule(name)
            hooks.append(m.register_forward_hook(
                lambda _m, _i, out, name=name: shapes.__setitem__(name, out.shape)))
        try:
            _, acts = forward_with_activations(model, x, self.layers)
        finally:
            for h in hooks:
                h.remove()
        return {name: _pool(acts[name], shapes[name]) for name in self.layers}

    def _fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
        with torch.no_grad():
            feats = [self._layer_features(model, b) for b in x.split(self.batch_size)]
        k = self.num_classes_ or 0
        self.means_, self.precisions_ = {}, {}
        for name in self.layers:
            f = torch.cat([d[name] for d in feats]).double()
            counts = torch.bincount(y, minlength=k).clamp_min(1).to(f)
            mu = torch.zeros(k, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, y, f)
            mu = mu / counts[:, None]
            centred = f - mu[y]
            cov = centred.T @ centred / len(f)
            cov = cov + 1e-6 * cov.diagonal().mean() * torch.eye(len(cov), dtype=f.dtype,
                                                                 device=f.device)
            self.means_[name] = mu.to(x.dtype)
            self.precisions_[name] = torch.linalg.pinv(cov, hermitian=True).to(x.dtype)
        if x_adv is None:
            x_adv = craft(model, x, y, self.attacks, self.n_adv,
                          self.generator(torch.device("cpu")))
        clean = batched(lambda b: self._confidences(model, b), x, self.batch_size)
        adv = batched(lambda b: self._confidences(model, b), x_adv, self.batch_size)
        self.classifier_ = train_binary(clean, adv, epochs=self.epochs, seed=self.seed)

    def _mahalanobis(self, f: dict[str, Tensor]) -> Tensor:
        """N x layers: M_l = max_c -(f - mu_c)^T P (f - mu_c)."""
        cols = []
        for name in self.layers:
            diff = f[name][:, None, :] - self.means_[name][None]          # N x K x D
            m = torch.einsum("nkd,de,nke->nk", diff, self.precisions_[name], diff)
            cols.append((-m).amax(1))
        return torch.stack(cols, 1)

    def _confidences(self, model: Model, x: Tensor) -> Tensor:
        """Per-layer confidences N x layers, with the input pre-processing when noise > 0."""
        if self.noise > 0:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                m = self._mahalanobis(self._layer_features(model, xg))
                (g,) = torch.autograd.grad(m.sum(), xg)
            x = clip_box(x + self.noise * g.sign()).detach()
        with torch.no_grad():
            return self._mahalanobis(self._layer_features(model, x))

    def confidences(self, x: Tensor) -> Tensor:
        """Per-layer Mahalanobis confidences N x len(layers) (higher = more typical)."""
        model = self.check_model()
        self.check_inputs(x)
        return batched(lambda b: self._confidences(model, b), x.detach(), self.batch_size)

    def _score(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.classifier_(self._confidences(model, x))

    def _score_torch(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        """Differentiable score without the pre-processing step (treated as absent)."""
        return self.classifier_(self._mahalanobis(self._layer_features(model, x)))
