"""NES (attacks/blackbox/nes.py): its estimate against autograd, unbiased with the right scale
(foolbox's evolution-strategies gradient is 4x too small: a cosine test alone would not see
it), exact antithetic pairs on a quadratic, and the budget.
"""
from __future__ import annotations

import torch

from advlab.attacks.blackbox import Oracle
from advlab.attacks.blackbox.nes import NES
from testkit import Linear, Quadratic, cos, estimate, images, scale, session, true_grad


def test_nes_matches_autograd_with_the_right_scale_linear() -> None:
    model = Linear(16, 5).eval()
    x = images()
    with torch.no_grad():
        y = model(x).argmax(1)  # not yet adversarial: the estimator runs
    atk = NES(0.3, sigma=1e-3, n_samples=20_000, loss="margin", max_queries=None, steps=1)
    s = session(model, len(x))
    est, logits = estimate(atk, s, x, y)
    true = true_grad(atk.objective, model, x, y)
    torch.testing.assert_close(logits, model(x).detach())
    assert (cos(est, true) > 0.99).all(), cos(est, true)
    assert ((scale(est, true) - 1).abs() < 0.05).all(), scale(est, true)
    assert torch.equal(s.oracle.counts, torch.full((4,), 1 + 20_000))


def test_nes_matches_autograd_on_a_quadratic_with_cross_entropy() -> None:
    model = Quadratic(16).eval()
    x = images(seed=1)
    y = torch.zeros(4, dtype=torch.int64)
    with torch.no_grad():
        keep = model(x).argmax(1) == 0
    assert keep.all()
    atk = NES(0.3, sigma=1e-3, n_samples=20_000, loss="ce", max_queries=None, steps=1)
    est, _ = estimate(atk, session(model, len(x)), x, y)
    true = true_grad(atk.objective, model, x, y)
    assert (cos(est, true) > 0.95).all(), cos(est, true)
    assert ((scale(est, true) - 1).abs() < 0.1).all(), scale(est, true)


def test_nes_antithetic_pair_is_exact_on_a_quadratic() -> None:
    """For a quadratic J, J(x + s u) - J(x - s u) = 2 s u.grad J exactly: one pair gives
    (u.g) u, whatever sigma."""
    model = Quadratic(16).eval()
    x, y = images(1, seed=2), torch.zeros(1, dtype=torch.int64)
    atk = NES(0.3, sigma=0.05, n_samples=2, loss="margin", max_queries=None, steps=1)
    s = session(model, 1, seed=7)
    est, _ = estimate(atk, s, x, y)
    u = torch.randn((1, 1, *x.shape[1:]), generator=torch.Generator().manual_seed(7),
                    dtype=x.dtype)[:, 0]
    g = true_grad(atk.objective, model, x, y)
    torch.testing.assert_close(est, (u * g).sum() * u)


def test_nes_budget_limits_pairs() -> None:
    """With 7 queries left: 1 success check, 1 kept in reserve, 2 pairs (4 queries)."""
    model = Linear(16, 5).eval()
    x = images(2)
    with torch.no_grad():
        y = model(x).argmax(1)
    atk = NES(0.3, n_samples=50, max_queries=7, steps=1)
    s = session(Oracle(model, max_queries=7), 2)
    estimate(atk, s, x, y)
    assert torch.equal(s.oracle.counts, torch.tensor([5, 5]))

