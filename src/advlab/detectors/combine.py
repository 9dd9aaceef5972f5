r"""Several detectors as one: flag an input when any of them fires.

Different detectors see different adversarial examples: reconstruction errors catch large
perturbations far from the data (FGSM at eps=0.3), prediction changes under squeezing catch
minimal ones sitting on the decision boundary (C&W, L-BFGS). MagNet already combines its
detectors this way; :class:`AnyOf` does it for any detectors. Each member's score is put on a
common scale with statistics of clean inputs held out from fitting,

.. math::  z_i(x) = \frac{s_i(x) - \mathrm{median}_i}{q_{99,i} - \mathrm{median}_i},
           \qquad score(x) = \max_i z_i(x)

and one threshold on the maximum then sets the false-positive rate of the union.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from advlab.detectors.detector import Detector, Model
from advlab.errors import InputError


class AnyOf(Detector):
    """The union of detectors: the largest of their clean-normalised scores.

    Args:
        detectors: unfitted detectors, fitted by :meth:`fit` on the same model and data.
        validation: fraction of the fitting data held out to normalise the scores.
        batch_size, seed: see :class:`~advlab.detectors.detector.Detector`; the seed draws the
            held-out split.

    References: Meng & Chen, "MagNet", arXiv:1705.09064 (several detectors, flag if any
    fires); Xu, Evans & Qi, arXiv:1704.01155 (the maximum over squeezers).
    """

    def __init__(self, detectors: Sequence[Detector], *, validation: float = 0.1,
                 batch_size: int = 500, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if not detectors or not all(isinstance(d, Detector) for d in detectors):
            raise InputError("AnyOf needs a non-empty list of detectors")
        if not 0.0 < validation < 1.0:
            raise InputError(f"validation must lie in (0, 1), got {validation}")
        self.detectors, self.validation = list(detectors), validation

    @property
    def supervised(self) -> bool:  # type: ignore[override]
        return any(d.supervised for d in self.detectors)

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return all(d.differentiable for d in self.detectors)

    def _fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
        perm = torch.randperm(len(x), generator=self.generator(torch.device("cpu")))
        n_val = max(2, int(round(self.validation * len(x))))
        val, tr = perm[:n_val].to(x.device), perm[n_val:].to(x.device)
        self.location_, self.spread_ = [], []
        for d in self.detectors:
            d.fit(model, x[tr], y[tr], x_adv if d.supervised else None)
            s = d.score(x[val])
            med = s.median()
            self.location_.append(float(med))
            self.spread_.append(float((s.quantile(0.99) - med).clamp_min(1e-9)))

    def member_scores(self, x: Tensor) -> Tensor:
        """len(detectors) x N normalised scores."""
        self.check_model()
        self.check_inputs(x)
        return torch.stack([(d.score(x) - m) / s
                            for d, m, s in zip(self.detectors, self.location_, self.spread_)])

    def _score(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        return torch.stack([(d.score(x) - m) / s for d, m, s in
                            zip(self.detectors, self.location_, self.spread_)]).amax(0)

    def _score_torch(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        return torch.stack([(d.score_torch(x) - m) / s for d, m, s in
                            zip(self.detectors, self.location_, self.spread_)]).amax(0)
