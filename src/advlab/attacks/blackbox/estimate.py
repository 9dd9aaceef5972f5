r"""Gradient sources that *estimate* the gradient from scores, for the shared PGD loop.

The white-box loop of :class:`~advlab.attacks.gradient.GradientAttack` (step along the steepest
direction of the ball, project, clip, early stopping) is reused unchanged: only its gradient
source is an :class:`Estimator`, which sees the model through an
:class:`~advlab.attacks.blackbox.oracle.Oracle`. NES (nes.py) and Bandits-TD (bandits.py) are
the two estimators.

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

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from advlab.attacks.base import Crafted, Model, is_success
from advlab.attacks.blackbox.oracle import Oracle, as_oracle
from advlab.attacks.gradient import GradientSettings, Probe, Source
from advlab.errors import ThreatModelError
from advlab.losses import Objective


@dataclass
class OracleProbe(Probe):
    """The probe of a score-based run: its ``model`` is the :class:`Oracle`, and ``logits``
    hold each example's latest scores (filled by the success checks)."""

    logits: Tensor | None = None

    @property
    def oracle(self) -> Oracle:
        assert isinstance(self.model, Oracle)
        return self.model

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


class Estimator(Source):
    """A zeroth-order gradient source: the model is seen only through an :class:`Oracle` of
    its scores with ``max_queries`` per example; subclasses implement :meth:`estimate`.

    ``step_cost``: queries per example per loop step, the success check included.
    """

    step_cost: int = 1

    def __init__(self, max_queries: int | None) -> None:
        self.max_queries = max_queries

    def prepare(self, model: Model, x: Tensor, generator: torch.Generator) -> OracleProbe:
        oracle = as_oracle(model, "scores", self.max_queries)
        if oracle.access != "scores":
            raise ThreatModelError(f"{type(self).__name__} needs score access; the oracle "
                                   "gives labels only")
        oracle.reset(len(x), x.device)
        return OracleProbe(oracle, generator, self.init_memory(x))

    def init_memory(self, x: Tensor) -> dict[str, Any]:
        """Per-example estimator state for a batch x (e.g. a prior), kept in the probe."""
        return {}

    def __call__(self, objective: Objective, probe: Probe, x_adv: Tensor, y: Tensor,
                 target: Tensor | None, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        """Success check at x_adv, then the estimate for the examples still to fool."""
        assert isinstance(probe, OracleProbe)
        rows = torch.arange(len(x_adv), device=x_adv.device) if idx is None else idx
        logits = probe.check(x_adv, rows)
        budget = probe.oracle.remaining()[rows] - 1  # one kept for the next success check
        todo = ~is_success(logits, y, target) & (budget >= 1)
        grad = torch.zeros_like(x_adv)
        if todo.any():
            t = None if target is None else target[todo]
            grad[todo] = self.estimate(objective, probe, x_adv[todo], y[todo], t, rows[todo],
                                       budget[todo])
        return grad, logits

    def estimate(self, objective: Objective, probe: OracleProbe, x: Tensor, y: Tensor,
                 target: Tensor | None, rows: Tensor, budget: Tensor) -> Tensor:
        """Estimate the gradient of ``objective`` at x from at most ``budget`` queries per row
        (charged to ``rows``); rows that cannot afford an estimate get zero."""
        raise NotImplementedError

    def finish(self, probe: Probe, x_adv: Tensor) -> Crafted:
        assert isinstance(probe, OracleProbe)
        return Crafted(x_adv, queries=probe.oracle.counts.clone(),
                       info={"budget_exhausted": probe.oracle.exhausted()})


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


class EstimatedSettings(GradientSettings):
    """:class:`~advlab.attacks.gradient.GradientSettings` of a score-based attack: Linf or
    L2, a per-example query budget ``max_queries`` (success checks included) and ``steps``
    (default: enough to spend the budget). The source is the attack's :class:`Estimator`
    (:meth:`estimator`), built from the other settings."""

    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")

    steps: int | None = None
    max_queries: int | None = 2_000

    def estimator(self) -> Estimator:
        """The gradient estimate these settings describe."""
        raise NotImplementedError

    def check(self) -> None:
        source = self.estimator()
        self.resolve("source", source)
        self.resolve("steps", steps_for(self.max_queries, self.steps, source.step_cost))
        super().check()
