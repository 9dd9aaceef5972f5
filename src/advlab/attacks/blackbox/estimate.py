r"""Score-based attacks that run the shared PGD loop on an *estimated* gradient.

The white-box loop of :class:`~advlab.attacks.gradient.GradientAttack` (step along the steepest
direction of the ball, project, clip, early stopping) is reused unchanged: only
:meth:`~advlab.attacks.gradient.GradientAttack.gradient` is replaced by a zeroth-order
estimator that sees the model through an :class:`~advlab.attacks.blackbox.oracle.Oracle`.
NES (nes.py) and Bandits-TD (bandits.py) are the two estimators.

Query accounting, per example and per step of the loop:

1. one query at the current point x_t (the success check that drives early stopping; its
   scores are cached, so an example whose budget is spent keeps its last known scores);
2. the estimator's queries, only for examples not yet adversarial and only as many as the
   budget allows while keeping one query in reserve for the next success check, so the
   returned point of every example has always been checked by a real query.

An example with no budget left gets a zero gradient: the loop leaves it where it is and the
oracle is never asked again for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from advlab.attacks.base import Model, is_success
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle
from advlab.attacks.gradient import GradientAttack
from advlab.errors import ThreatModelError


@dataclass
class Session:
    """The per-run state of an estimated-gradient attack (never stored on the attack).

    Attributes:
        oracle: the only access to the model.
        generator: the attack's random source.
        logits: N x K scores at each example's current point (filled by the success checks).
        memory: estimator state per example, e.g. the Bandits prior.
    """

    oracle: Oracle
    generator: torch.Generator
    logits: Tensor | None = None
    memory: dict[str, Tensor] = field(default_factory=dict)

    def check(self, x: Tensor, rows: Tensor) -> Tensor:
        """Query x (one query per row, charged to ``rows``) where budget remains; return the
        latest scores of every row (cached scores where the budget is spent)."""
        ask = self.oracle.remaining()[rows] >= 1
        if ask.any():
            out = self.oracle(x[ask], owner=rows[ask])
            if self.logits is None:
                self.logits = out.new_full((len(self.oracle.counts), out.shape[1]), float("nan"))
            self.logits[rows[ask]] = out
        if self.logits is None:  # pragma: no cover - impossible after Oracle.reset
            raise ThreatModelError("no query budget for the first success check")
        return self.logits[rows]


class EstimatedGradientAttack(BlackBoxAttack, GradientAttack):
    """PGD on a zeroth-order gradient estimate; subclasses implement :meth:`estimate`.

    ``steps`` defaults to enough loop steps to spend ``max_queries`` at ``step_cost`` queries
    per step; ``restarts`` is always 1 (a restart would need uncounted queries).
    """

    step_cost: int = 1  # queries per example per loop step, the success check included

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        session = Session(oracle, generator, memory=self.init_session(x))
        return GradientAttack.perturb(self, session, x, y, target, eps, generator)

    def init_session(self, x: Tensor) -> dict[str, Tensor]:
        """Per-example estimator state for a batch x (e.g. a prior), kept in the Session."""
        return {}

    def gradient(self, model: Model, x_adv: Tensor, y: Tensor, target: Tensor | None,
                 idx: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Success check at x_adv, then the estimate for the examples still to fool."""
        session = model
        assert isinstance(session, Session)
        rows = torch.arange(len(x_adv), device=x_adv.device) if idx is None else idx
        logits = session.check(x_adv, rows)
        budget = session.oracle.remaining()[rows] - 1  # one kept for the next success check
        todo = ~is_success(logits, y, target) & (budget >= 1)
        grad = torch.zeros_like(x_adv)
        if todo.any():
            t = None if target is None else target[todo]
            grad[todo] = self.estimate(session, x_adv[todo], y[todo], t, rows[todo],
                                       budget[todo])
        return grad, logits

    def estimate(self, session: Session, x: Tensor, y: Tensor, target: Tensor | None,
                 rows: Tensor, budget: Tensor) -> Tensor:
        """Estimate the gradient of ``self.objective`` at x from at most ``budget`` queries
        per row (charged to ``rows``); rows that cannot afford an estimate get zero."""
        raise NotImplementedError


def steps_for(max_queries: int | None, steps: int | None, cost: int) -> int:
    """Loop steps: as given, else enough to spend the budget at ``cost`` queries a step."""
    if steps is not None:
        if steps < 1:
            raise ThreatModelError(f"steps must be >= 1, got {steps}")
        return steps
    if max_queries is None:
        raise ThreatModelError("give steps or max_queries")
    if max_queries < 1:
        raise ThreatModelError(f"max_queries must be >= 1, got {max_queries}")
    return max(1, -(-max_queries // cost))
