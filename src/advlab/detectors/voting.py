r"""Majority voting over several networks, and the multi-network adversarial example.

Redundant systems run several independently trained networks and take a majority vote; an
input on which the voters disagree is suspicious, since a regular adversarial example crafted
on one network rarely fools all of them the same way. The attack on such a system crafts one
perturbation against all voters at once (Nesti, Biondi & Buttazzo): any advlab attack run on
:class:`Ensemble` (the mean of the voters' log-probabilities) does it, targeted so that every
voter moves to the same wrong class.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.detectors.detector import Detector, Model, fingerprint
from advlab.errors import InputError, NotFittedError
from advlab.validation import check_eval_mode, check_logits


class Ensemble(nn.Module):
    r"""The voters as one differentiable model: :math:`\frac1M \sum_m \log\mathrm{softmax}
    f_m(x)` (valid logits). Attacking it minimises the voters' mean cross-entropy of the
    target: a multi-network adversarial example.

    The wrapper is created in eval mode without touching the members' modes.

    Args:
        models: the voters (nn.Modules, eval mode), same input shape and number of classes.

    References: Nesti, Biondi & Buttazzo, arXiv:2101.11466 (multi-network adversarial
    examples); Liu et al., "Delving into transferable adversarial examples and black-box
    attacks", ICLR 2017, arXiv:1611.02770 (ensemble attacks).
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(models) < 1 or not all(isinstance(m, nn.Module) for m in models):
            raise InputError("Ensemble needs a non-empty list of nn.Module models")
        self.members = nn.ModuleList(models)
        self.training = False  # this wrapper only; the members keep their own modes

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([F.log_softmax(m(x), 1) for m in self.members]).mean(0)


class NetworkVote(Detector):
    """Flag inputs on which the networks disagree.

    The protected model (given to fit) votes with ``voters``; the score is the fraction of all
    networks whose predicted label differs from the protected model's prediction (0 when they
    are unanimous). :meth:`majority` is the system's voted output.

    Args:
        voters: the other networks (eval mode; same inputs and classes as the model).
        batch_size, seed: see :class:`~advlab.detectors.detector.Detector`.

    References: Nesti, Biondi & Buttazzo, "Detecting adversarial examples by input
    transformations, defense perturbations, and voting", arXiv:2101.11466.
    """

    differentiable = True

    def __init__(self, voters: Sequence[Model], *, batch_size: int = 500, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if not voters:
            raise InputError("NetworkVote needs at least one other voter")
        self.voters = list(voters)

    def _fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
        for v in self.voters:
            check_eval_mode(v)
            with torch.no_grad():
                out = v(x[: self.batch_size])
            check_logits(out, min(len(x), self.batch_size))
            if out.shape[1] != self.num_classes_:
                raise InputError(f"a voter predicts {out.shape[1]} classes, the model "
                                 f"{self.num_classes_}")
        self._voter_prints = [fingerprint(v) for v in self.voters]

    def check_model(self, model: Model | None = None) -> Model:
        fitted = super().check_model(model)
        if [fingerprint(v) for v in self.voters] != self._voter_prints:
            raise NotFittedError("a voter's weights changed since NetworkVote was fitted")
        return fitted

    def _labels(self, model: Model, x: Tensor) -> Tensor:
        return torch.stack([m(x).argmax(1) for m in [model, *self.voters]])  # M x N

    def majority(self, x: Tensor) -> Tensor:
        """The voted label (N,); ties go to the protected model's label."""
        model = self.check_model()
        self.check_inputs(x)
        with torch.no_grad():
            labels = torch.cat([self._labels(model, b) for b in x.split(self.batch_size)], 1)
        k = self.num_classes_ or 0
        counts = F.one_hot(labels, k).sum(0).float()
        counts.scatter_add_(1, labels[0][:, None], torch.full_like(counts[:, :1], 0.5))
        return counts.argmax(1)

    def _score(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        labels = self._labels(model, x)
        return (labels != labels[0]).float().mean(0)

    def _score_torch(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        """Surrogate: mean L1 distance between the voters' and the model's softmax outputs."""
        p = F.softmax(model(x), 1)
        return torch.stack([(p - F.softmax(v(x), 1)).abs().sum(1) for v in self.voters]).mean(0)
