"""The oracle's honest query accounting, checked through every black-box attack (score-based
and label-only).

Every attack is run on a model wrapped in a counter of the rows it really evaluates. The
attack base evaluates the model outside the oracle for the final re-check (one row per
example) and, when the caller hands in an Oracle of its own, for a probe of the model's output
on the first rows (a plain model's output is checked on the attack's first query instead);
every other row must be an oracle query charged to the right example, and no example may go
over its budget.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import advlab
import testkit
from advlab.attacks.base import PROBE_ROWS
from advlab.attacks.blackbox import Oracle

SCORE = ["nes", "bandits", "square", "square-l2", "simba", "simba-dct", "zoo-attack"]
HARD = {  # settings under which 12 queries cannot fool the tiny model
    "nes": {"eps": 0.01}, "bandits": {"eps": 0.01}, "square": {"eps": 0.01},
    "square-l2": {"eps": 0.05}, "simba": {"step": 0.01}, "simba-dct": {"step": 0.01},
    "zoo-attack": {"lr": 1e-4},
}
X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))


class Counted(testkit.Counted):
    """Counts the rows the wrapped model evaluates; refuses to build an autograd graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.requires_grad:
            raise AssertionError("a black-box attack built an autograd graph")
        return super().forward(x)


@pytest.mark.parametrize("name", SCORE)
@pytest.mark.parametrize("budget", [3, 40])
def test_each_example_charged_exactly(name: str, budget: int, tiny_factory) -> None:
    model = Counted(tiny_factory())
    y = testkit.predicted(model.model, X)
    for i in range(2):  # one example at a time: its real calls are exactly known
        model.reset()
        res = advlab.attacks.get(name, max_queries=budget)(model, X[i:i + 1], y[i:i + 1])
        assert res.queries is not None
        q = int(res.queries.item())
        assert 1 <= q <= budget
        assert model.rows - 1 == q, "reported queries differ from the model's real calls"
        assert bool(res.info["budget_exhausted"].item()) == (q >= budget)


@pytest.mark.parametrize("name", SCORE)
def test_batch_budget_and_total(name: str, tiny_factory) -> None:
    model = Counted(tiny_factory())
    y = testkit.predicted(model.model, X)
    budget = 25
    res = advlab.attacks.get(name, max_queries=budget)(model, X, y)
    assert (res.queries <= budget).all() and (res.queries >= 1).all()
    assert int(res.queries.sum()) == model.rows - len(X)
    # the same through a caller's own Oracle, whose budget is the one enforced
    model.reset()
    oracle = Oracle(model, max_queries=7)
    res = advlab.attacks.get(name, max_queries=10_000)(oracle, X, y)
    assert (res.queries <= 7).all()
    assert int(res.queries.sum()) == model.rows - len(X) - min(PROBE_ROWS, len(X))
    assert torch.equal(oracle.counts, res.queries)


@pytest.mark.parametrize("name", SCORE)
def test_budget_is_spent_on_hard_examples(name: str, tiny_factory) -> None:
    """With a budget too small to succeed, attacks use it up to the last query they can
    afford (not stopping at zero), and never beyond."""
    model = Counted(tiny_factory())
    y = testkit.predicted(model.model, X)
    res = advlab.attacks.get(name, max_queries=12, **HARD[name])(model, X, y)
    hard = ~res.success
    assert hard.sum() >= 3
    assert (res.queries[hard] >= 9).all(), res.queries  # at most a partial step left unused


@pytest.mark.parametrize("name", SCORE)
def test_no_graph_no_backward(name: str, tiny_factory) -> None:
    """A model whose parameters require grad, attacked by every score-based attack with the
    default settings: the model is never run with autograd enabled, so no graph exists and
    no backward pass can happen; parameters' .grad stay None."""
    inner = tiny_factory()
    assert all(p.requires_grad for p in inner.parameters())
    model = Counted(inner)
    y = testkit.predicted(inner, X)
    res = advlab.attacks.get(name, max_queries=60)(model, X, y)
    assert model.calls > 1 and not res.x_adv.requires_grad  # queries beyond the re-check
    assert all(p.grad is None for p in inner.parameters())


# The label-only attacks, on a linear model that counts the rows it sees.
LABEL_ONLY = {
    "hopskipjump": {"max_queries": 300},
    "hopskipjump-linf": {"max_queries": 300},
    "boundary": {"max_queries": 150},
    "genattack": {"max_queries": 100, "eps": 0.05},
    "autozoom": {"max_queries": 120},
    "substitute": {"max_queries": 5, "rounds": 3, "epochs": 1, "arch": "mlp", "width": 4},
    "signopt": {"max_queries": 300, "q": 20},
    "geoda": {"max_queries": 300, "iterations": 4},
    "onepixel": {"max_queries": 50, "popsize": 10},
    "pixle": {"max_queries": 30},
}


@pytest.mark.parametrize("name", sorted(LABEL_ONLY))
@pytest.mark.parametrize("targeted", [False, True])
def test_label_only_budget_and_counts(name: str, targeted: bool) -> None:
    model = testkit.LabelCounter().eval()
    y = model.labels(X)
    target = (y + 1) % 10 if targeted else None
    res = advlab.attacks.get(name, **LABEL_ONLY[name])(model, X, y, target)
    budget = LABEL_ONLY[name]["max_queries"]
    assert (res.queries <= budget).all() and (res.queries >= 1).all()
    extra = len(X)  # the base's uncounted success re-check (its output check rides on a query)
    if name == "substitute" and res.info["oracle_labels"] > len(X):
        extra += len(X)  # its evaluator measures the transfer success
    assert model.rows == int(res.queries.sum()) + extra
    assert torch.equal(res.info["budget_exhausted"], res.queries >= budget)
    assert model.w.grad is None
