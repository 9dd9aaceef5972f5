"""Square: exact properties of its random search."""
from __future__ import annotations

import torch

import testkit
from advlab.attacks.blackbox.square import Square, p_selection


def linear() -> testkit.Linear:
    return testkit.Linear(64, 10, bias_scale=0.0, weight_scale=0.3).eval()


def test_p_schedule_is_the_papers() -> None:
    """p halves after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000 iterations."""
    got = [p_selection(0.8, it, 10_000) for it in (0, 10, 11, 50, 51, 201, 501, 1001, 2001,
                                                   4001, 6001, 8001)]
    assert got == [0.8, 0.8, 0.4, 0.4, 0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125,
                   0.0015625]
    assert p_selection(0.8, 100, 1_000) == p_selection(0.8, 1_000, 10_000)  # rescaled


def test_square_linf_stays_on_the_vertices() -> None:
    """Every pixel of an accepted Square-Linf point is at +-eps from x (away from the box)."""
    model = linear()
    x = testkit.interior(6)
    res = Square(0.1, max_queries=50)(model, x, testkit.predicted(model, x))
    delta = (res.x_adv - x).abs()
    torch.testing.assert_close(delta, torch.full_like(delta, 0.1))
    assert (res.queries >= 1).all()


def test_square_l2_uses_the_whole_budget_of_norm() -> None:
    """Square-L2 points have ||delta||_2 = eps exactly (no clipping away from the box)."""
    model = linear()
    x = testkit.interior(6)
    res = Square(0.3, norm="l2", max_queries=50)(model, x, testkit.predicted(model, x))
    torch.testing.assert_close(res.norms["l2"], torch.full((6,), 0.3, dtype=torch.float64))


def test_square_only_accepts_improvements() -> None:
    """The margin at the returned point is never above the margin at the initial stripes
    (same seed, same stripes): only improving proposals are accepted."""
    model = linear()
    x = testkit.interior(8, seed=1)
    y = testkit.predicted(model, x)

    def margin_at(xa: torch.Tensor) -> torch.Tensor:
        z = model(xa).detach()
        return z.gather(1, y[:, None])[:, 0] - z.scatter(1, y[:, None], -1e9).amax(1)

    m1 = margin_at(Square(0.05, max_queries=1)(model, x, y).x_adv)
    m20 = margin_at(Square(0.05, max_queries=20)(model, x, y).x_adv)
    m200 = margin_at(Square(0.05, max_queries=200)(model, x, y).x_adv)
    assert (m20 <= m1 + 1e-12).all() and (m200 <= m1 + 1e-12).all()
    assert (m200 < m1).all() and (m200 < 0).sum() > (m1 < 0).sum()
