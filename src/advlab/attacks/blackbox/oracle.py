"""The black-box threat model: an :class:`Oracle` that answers queries and counts them.

A black-box attack sees the model only through an Oracle: outputs are computed without
autograd and detached (no gradient can leak, even by accident), every query is counted for the
example it belongs to (the attack's own success checks included), and a per-example budget
``max_queries`` is enforced: a query that would exceed it raises
:class:`~advlab.errors.BudgetExceededError`, so attacks ask :meth:`Oracle.remaining` first and
stop. :class:`BlackBoxAttack` wraps a plain model into an Oracle and reports the counts in
``AttackResult.queries``.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model
from advlab.errors import AttackError, BudgetExceededError, ThreatModelError

ACCESS = ("scores", "labels")


class Oracle:
    """Query access to a classifier.

    Args:
        model: any callable x -> logits (an nn.Module in eval mode, or a remote service).
        access: "scores" (the logit vector) or "labels" (the top-1 class only).
        max_queries: per-example budget, or None for no limit.

    Counting: :meth:`reset` starts a batch of N examples; each row of a query is charged to
    the example named in ``owner`` (default: row i belongs to example i).
    """

    def __init__(self, model: Model, access: str = "scores",
                 max_queries: int | None = None) -> None:
        if access not in ACCESS:
            raise ThreatModelError(f"unknown oracle access {access!r}; use scores or labels")
        if max_queries is not None and max_queries < 1:
            raise ThreatModelError(f"max_queries must be >= 1, got {max_queries}")
        self._model, self.access, self.max_queries = model, access, max_queries
        self.counts = torch.zeros(0, dtype=torch.int64)

    @property
    def unwrapped(self) -> Model:
        """The model itself, for the evaluator's uncounted checks, never for attacks."""
        return self._model

    def reset(self, n: int, device: torch.device | str = "cpu") -> None:
        """Start counting for a batch of n examples."""
        self.counts = torch.zeros(n, dtype=torch.int64, device=device)

    def remaining(self) -> Tensor:
        """Queries left per example (a large number when there is no budget)."""
        if self.max_queries is None:
            return torch.full_like(self.counts, torch.iinfo(torch.int64).max // 2)
        return self.max_queries - self.counts

    def exhausted(self) -> Tensor:
        """bool (N,): examples with no query left."""
        return self.remaining() <= 0

    def __call__(self, x: Tensor, owner: Tensor | None = None) -> Tensor:
        """Answer a batch of queries.

        Args:
            x: M x C x H x W queries in [0, 1].
            owner: int64 (M,), the example each row is charged to; default arange(M).

        Returns:
            logits M x K (access "scores") or int64 labels (M,) (access "labels"), detached.

        Raises:
            BudgetExceededError: if any example would go over ``max_queries``.
        """
        if owner is None:
            owner = torch.arange(len(x), device=x.device)
        if len(self.counts) == 0 or int(owner.max()) >= len(self.counts):
            raise AttackError("Oracle.reset(n) must be called for the batch before querying")
        need = torch.bincount(owner, minlength=len(self.counts)).to(self.counts.device)
        if self.max_queries is not None and (self.counts + need > self.max_queries).any():
            raise BudgetExceededError(
                f"query budget of {self.max_queries} per example would be exceeded")
        self.counts += need
        with torch.no_grad():
            out = self._model(x.detach()).detach()
        return out if self.access == "scores" else out.argmax(1)


class BlackBoxAttack(Attack):
    """Base of the score-based and label-only attacks.

    Subclasses implement :meth:`attack`, which receives only the Oracle. ``access`` says what
    the attack needs; ``max_queries`` is the per-example budget.
    """

    access: ClassVar[str] = "scores"
    max_queries: int | None = None

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        oracle = model if isinstance(model, Oracle) else Oracle(model, self.access,
                                                                self.max_queries)
        if self.access == "scores" and oracle.access != "scores":
            raise ThreatModelError(f"{type(self).__name__} needs score access; the oracle "
                                   "gives labels only")
        oracle.reset(len(x), x.device)
        x_adv = self.attack(oracle, x, y, target, eps, generator)
        return Crafted(x_adv, queries=oracle.counts.clone(),
                       info={"budget_exhausted": oracle.exhausted()})

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        """Craft x_adv using only ``oracle`` queries."""
        raise NotImplementedError


def as_oracle(model: Model | Oracle, access: str = "scores",
              max_queries: int | None = None) -> Oracle:
    """Wrap a plain model in an Oracle (an Oracle is returned as it is)."""
    return model if isinstance(model, Oracle) else Oracle(model, access, max_queries)


