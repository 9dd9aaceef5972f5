"""ZOO (attacks/blackbox/zoo_attack.py): symmetric differences and Newton's second differences
against closed forms, partial coordinates and the budget.
"""
from __future__ import annotations

import torch
from torch import nn

from advlab.attacks.blackbox import Oracle
from advlab.attacks.blackbox.zoo_attack import ZOO
from advlab.attacks.minnorm import ScoreRun, cw_margin
from testkit import Linear, Quadratic, images, session


def _run(oracle: Oracle, x: torch.Tensor, y: torch.Tensor, const: float) -> ScoreRun:
    return ScoreRun.start(oracle, x, y, None, const, torch.Generator().manual_seed(0),
                          torch.float64)


def zoo_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, atk: ZOO, const: float):
    """One ZOO iteration from w = 0 with every coordinate estimated; returns the state."""
    s = session(model, len(x))
    state = atk._fresh(x, x.shape[2], None)
    atk._iterate(_run(s.oracle, x, y, const), state, torch.arange(len(x)))
    return state, s.oracle.counts


def test_zoo_symmetric_difference_matches_autograd() -> None:
    """ADAM's first moment after one step is (1 - beta1) g_hat: g_hat = c * df/dx at w = 0
    (the L2 term has zero gradient there), to finite-difference precision."""
    model = Quadratic(16).eval()
    x, y = images(2), torch.zeros(2, dtype=torch.int64)
    atk = ZOO(coords=16, h=1e-4, max_queries=None)
    state, counts = zoo_step(model, x, y, atk, const=3.0)
    xr = x.clone().requires_grad_(True)
    f = cw_margin(model(xr), y, None, atk.confidence, log_probs=True)
    (g,) = torch.autograd.grad(3.0 * f.sum(), xr)
    torch.testing.assert_close(state.adam.m / (1 - atk.beta1), g.flatten(1), rtol=1e-6,
                               atol=1e-7)
    assert torch.equal(counts, torch.full((2,), 2 * 16 + 1))


def test_zoo_newton_step_uses_the_second_difference() -> None:
    """Newton: w_i = -lr g_i / h_i with h_i = 2 + c Q_ii (the L2 term's curvature is 2),
    then kept in the box (x + w in [0, 1])."""
    model = Quadratic(16).eval()
    x, y = images(2, seed=3), torch.zeros(2, dtype=torch.int64)
    atk = ZOO(solver="newton", coords=16, h=1e-3, lr=1.0, max_queries=None)
    state, _ = zoo_step(model, x, y, atk, const=2.0)
    xr = x.clone().requires_grad_(True)
    f = cw_margin(model(xr), y, None, atk.confidence, log_probs=True)
    (g,) = torch.autograd.grad(2.0 * f.sum(), xr)
    hess = 2 + 2.0 * torch.diagonal(model.q.detach())
    want = (-g.flatten(1) / hess).clamp(-x.flatten(1), 1 - x.flatten(1))
    assert (want.abs() > 1e-3).all()
    torch.testing.assert_close(state.w.flatten(1), want, rtol=1e-5, atol=1e-8)


def test_zoo_partial_coordinates_and_budget() -> None:
    """Only the sampled coordinates move; 9 queries left buy 4 coordinates (2 each + 1)."""
    model = Linear(16, 2).eval()
    x = images(1)
    with torch.no_grad():
        y = model(x).argmax(1)
    atk = ZOO(coords=8, max_queries=9)
    oracle = Oracle(model, max_queries=9)
    oracle.reset(1)
    state = atk._fresh(x, 4, None)
    atk._iterate(_run(oracle, x, y, 1.0), state, torch.arange(1))
    assert int(oracle.counts) == 9
    assert int((state.w != 0).sum()) == 4

