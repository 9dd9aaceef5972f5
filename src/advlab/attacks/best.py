"""The smallest adversarial point found so far, per example: what every minimum-norm attack
that walks a path (FMN, DDN, EAD) keeps and returns.

An example is recorded only at a point whose logits were computed by the model and reach the
goal, so the returned point is adversarial wherever ``found`` is True; elsewhere it is x.
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import is_success
from advlab.threat import broadcast_rows


class Smallest:
    """Per example, the adversarial point of smallest norm seen so far.

    Args:
        x: the clean batch; the point returned for an example never fooled.

    Attributes:
        x_adv: N x ... the best point per example (x where none was found).
        norm: (N,) its norm (inf where none was found).
        found: bool (N,) an adversarial point was recorded.
    """

    def __init__(self, x: Tensor) -> None:
        self.x_adv = x.clone()
        self.norm = torch.full((len(x),), float("inf"), dtype=x.dtype, device=x.device)

    @property
    def found(self) -> Tensor:
        return self.norm < float("inf")

    def update(self, x_adv: Tensor, norm: Tensor, logits: Tensor, y: Tensor,
               target: Tensor | None, idx: Tensor | None = None) -> Tensor:
        """Record the rows of x_adv that reach the goal with a smaller norm than before.

        Args:
            x_adv: candidate points (rows ``idx`` of the batch; None: all rows).
            norm: their norms (N,) or (len(idx),).
            logits: the model's logits at x_adv.
            y, target: labels and targets of the same rows.

        Returns:
            bool: the rows that reach the goal (whether or not they were smaller).
        """
        ok = is_success(logits, y, target)
        rows = slice(None) if idx is None else idx
        better = ok & (norm < self.norm[rows])
        if better.any():
            self.norm[rows] = torch.where(better, norm, self.norm[rows])
            self.x_adv[rows] = torch.where(broadcast_rows(better, x_adv), x_adv, self.x_adv[rows])
        return ok
