r"""Losses that attacks optimise, each ``(logits, y) -> (N,)``.

- :func:`ce`: cross-entropy :math:`J(x, t) = -\log \mathrm{softmax}(Z(x))_t`.
- :func:`margin`: Carlini & Wagner's logit margin :math:`Z_y - \max_{i \ne y} Z_i`
  (arXiv:1608.04644), positive while y is predicted; clamped at :math:`-\kappa` when kappa is
  given. Correct for negative logits (the maximum is taken over the other classes only).
- :func:`dlr`: Croce & Hein's difference of logits ratio (arXiv:2003.01690), invariant to shifts
  and scale of the logits.

:func:`objective` turns any of them into the quantity an attacker *ascends*: for an untargeted
attack the loss of the true label (CE up, margin down), for a targeted one the loss of the
target (CE down, margin up), as in the lecture's FGSM and its targeted variant.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from advlab.errors import LabelError, UnknownNameError


def ce(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy of labels y."""
    return F.cross_entropy(logits, y, reduction="none")


def max_other(logits: Tensor, y: Tensor) -> Tensor:
    """max_{i != y} Z_i, per example."""
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(1)


def margin(logits: Tensor, y: Tensor, kappa: float | None = None) -> Tensor:
    """Carlini & Wagner margin Z_y - max_{i != y} Z_i, optionally clamped below at -kappa."""
    m = logits.gather(1, y[:, None]).squeeze(1) - max_other(logits, y)
    return m if kappa is None else m.clamp_min(-kappa)


def _need_classes(logits: Tensor, k: int, what: str) -> None:
    if logits.shape[1] < k:
        raise LabelError(f"{what} needs at least {k} classes, the model has {logits.shape[1]}")


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    r"""Untargeted DLR: :math:`-(z_y - \max_{i\ne y} z_i) / (z_{\pi_1} - z_{\pi_3})`."""
    _need_classes(logits, 3, "the DLR loss")
    top = logits.sort(1, descending=True).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    r"""Targeted DLR: :math:`-(z_y - z_t) / (z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2)`."""
    _need_classes(logits, 4, "the targeted DLR loss")
    top = logits.sort(1, descending=True).values
    zy = logits.gather(1, y[:, None]).squeeze(1)
    zt = logits.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


Objective = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def _ce_objective(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    return ce(logits, y) if target is None else -ce(logits, target)


def _margin_objective(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    return -margin(logits, y) if target is None else margin(logits, target)


def _dlr_objective(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    return dlr(logits, y) if target is None else dlr_targeted(logits, y, target)


OBJECTIVES: dict[str, Objective] = {
    "ce": _ce_objective,
    "margin": _margin_objective,
    "dlr": _dlr_objective,
}


def objective(name: str) -> Objective:
    """The ascent objective ``(logits, y, target) -> (N,)`` of a loss name."""
    if name not in OBJECTIVES:
        raise UnknownNameError("loss", name, list(OBJECTIVES))
    return OBJECTIVES[name]
