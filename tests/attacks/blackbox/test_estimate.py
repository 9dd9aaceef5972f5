"""The score-based gradient source (estimate.py): the probe's budget-aware success check, the
refusal of a label-only oracle, and the steps a query budget buys."""
from __future__ import annotations

import pytest
import torch

import testkit
from advlab.attacks.blackbox import Oracle
from advlab.attacks.blackbox.estimate import Estimator, OracleProbe, steps_for
from advlab.errors import ThreatModelError


def test_check_charges_one_query_per_row_and_keeps_the_last_scores() -> None:
    """Each row with budget left costs one query and gets fresh scores; a row whose budget is
    spent costs nothing and gets the scores of its last query."""
    model = testkit.Linear(16, 3).eval()
    xs = [testkit.images(3, seed) for seed in range(3)]
    oracle = Oracle(model, max_queries=2)
    oracle.reset(3)
    probe = OracleProbe(oracle, torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = [model(x) for x in xs]

    torch.testing.assert_close(probe.check(xs[0], torch.arange(3)), z[0])
    assert oracle.counts.tolist() == [1, 1, 1]
    rows = torch.tensor([0, 2])
    torch.testing.assert_close(probe.check(xs[1][rows], rows), z[1][rows])
    assert oracle.counts.tolist() == [2, 1, 2]
    rows = torch.tensor([0, 1])
    got = probe.check(xs[2][rows], rows)
    assert oracle.counts.tolist() == [2, 2, 2]  # row 0 had no query left
    torch.testing.assert_close(got[0], z[1][0])  # its scores from the second check
    torch.testing.assert_close(got[1], z[2][1])


def test_prepare_refuses_a_label_only_oracle() -> None:
    model = testkit.Linear(16, 3).eval()
    x = testkit.images(2)
    with pytest.raises(ThreatModelError, match="score access"):
        Estimator(10).prepare(Oracle(model, "labels"), x, torch.Generator())
    probe = Estimator(10).prepare(Oracle(model, "scores"), x, torch.Generator())
    assert probe.oracle.counts.tolist() == [0, 0]  # counting starts at the run's batch


def test_steps_for_a_budget() -> None:
    assert steps_for(100, 7, 3) == 7  # given steps win
    assert steps_for(100, None, 3) == 34  # ceil(100 / 3): the budget is spent
    assert steps_for(99, None, 3) == 33
    assert steps_for(2, None, 3) == 1  # at least one step
    for max_queries, steps, match in [(None, None, "give steps or max_queries"),
                                      (100, 0, "steps must be >= 1"),
                                      (0, None, "max_queries must be >= 1")]:
        with pytest.raises(ThreatModelError, match=match):
            steps_for(max_queries, steps, 3)
