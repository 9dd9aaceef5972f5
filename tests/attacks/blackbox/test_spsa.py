"""SPSA: the estimate is exactly (1/n) sum_j v_j v_j^T grad on a linear objective, Adam's
first step is the sign of the estimate, queries are counted, and on a model whose gradient
is masked (quantised input) SPSA succeeds where PGD's zero gradients fail."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import advlab
from advlab.attacks import PGD
from advlab.attacks.blackbox import Oracle
from advlab.attacks.blackbox.estimate import OracleProbe
from advlab.attacks.blackbox.spsa import SPSA, SPSAEstimate
from advlab.losses import objective
from testkit import linear_setup


def test_estimate_is_the_rademacher_projection_of_the_gradient() -> None:
    """Two classes: the margin is linear in x, so each pair's difference quotient is exactly
    v . grad, and the estimate is (1/n) sum_j v_j (v_j . grad)."""
    model, x, y, _, _ = linear_setup(n=3)
    source = SPSAEstimate(0.01, 5, None)
    oracle = Oracle(model)
    oracle.reset(len(x))
    probe = OracleProbe(oracle, torch.Generator().manual_seed(7))
    est = source.estimate(objective("margin"), probe, x, y, None, torch.arange(3),
                          torch.full((3,), 100))
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective("margin")(model(xr), y, None).sum(), xr)
    g = torch.Generator().manual_seed(7)  # the same draws: 5 directions per row, rows in order
    v = torch.randint(0, 2, (15, 1, 4, 4), generator=g).to(x.dtype) * 2 - 1
    v = v.view(3, 5, -1)
    want = (v * (v * grad.flatten(1)[:, None]).sum(2, keepdim=True)).mean(1)
    torch.testing.assert_close(est.flatten(1), want)
    assert torch.equal(oracle.counts, torch.full((3,), 10))


def test_adam_first_step_is_the_sign() -> None:
    attack = SPSA()
    g = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    d = attack.direction(g, attack.init_memory(g), None)
    torch.testing.assert_close(d, g.sign(), atol=1e-4, rtol=0)  # float32 bias correction
    assert torch.equal(attack.direction(torch.zeros_like(g), attack.init_memory(g), None),
                       torch.zeros_like(g)), "a zero estimate must not move the point"


def test_queries_are_counted_and_budgeted() -> None:
    model, x, y, _, _ = linear_setup(n=4)
    res = SPSA(eps=0.01, n_samples=4, steps=None, max_queries=30)(model, x, y)
    assert (res.queries <= 30).all() and (res.queries >= 1).all()


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        SPSA(norm="l1")
    with pytest.raises(advlab.errors.ThreatModelError):
        SPSA(delta=0.0)


class Quantized(nn.Module):
    """The model on 8-bit inputs: round() has zero gradient, so autograd sees nothing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 255) / 255)


def test_masked_gradients_do_not_stop_spsa(mlp, mnist_test) -> None:
    x, y = mnist_test[0][:8], mnist_test[1][:8]
    masked = Quantized(mlp).eval()
    with torch.no_grad():
        clean_wrong = (masked(x).argmax(1) != y).float().mean().item()
    pgd = PGD(eps=0.15, steps=20)(masked, x, y)
    assert pgd.success_rate == clean_wrong  # zero gradients: PGD cannot move
    spsa = SPSA(eps=0.15, steps=40, n_samples=16)(masked, x, y)
    assert spsa.success_rate >= clean_wrong + 0.5
