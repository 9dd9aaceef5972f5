"""Square and SimBA: exact properties of their random searches."""
from __future__ import annotations

import torch
from torch import nn

from advlab.attacks.blackbox.simba import SimBA, _dct_matrix
from advlab.attacks.blackbox.square import Square, p_selection


class Linear(nn.Module):
    def __init__(self, d: int, k: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(k, d, generator=g, dtype=torch.float64) * 0.3)
        self.b = nn.Parameter(torch.zeros(k, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def interior(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, side, side, generator=g, dtype=torch.float64) * 0.2 + 0.4


def labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def test_p_schedule_is_the_papers() -> None:
    """p halves after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000 iterations."""
    got = [p_selection(0.8, it, 10_000) for it in (0, 10, 11, 50, 51, 201, 501, 1001, 2001,
                                                   4001, 6001, 8001)]
    assert got == [0.8, 0.8, 0.4, 0.4, 0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125,
                   0.0015625]
    assert p_selection(0.8, 100, 1_000) == p_selection(0.8, 1_000, 10_000)  # rescaled


def test_square_linf_stays_on_the_vertices() -> None:
    """Every pixel of an accepted Square-Linf point is at +-eps from x (away from the box)."""
    model = Linear(64, 10).eval()
    x = interior(6)
    res = Square(0.1, max_queries=50)(model, x, labels(model, x))
    delta = (res.x_adv - x).abs()
    torch.testing.assert_close(delta, torch.full_like(delta, 0.1))
    assert (res.queries >= 1).all()


def test_square_l2_uses_the_whole_budget_of_norm() -> None:
    """Square-L2 points have ||delta||_2 = eps exactly (no clipping away from the box)."""
    model = Linear(64, 10).eval()
    x = interior(6)
    res = Square(0.3, norm="l2", max_queries=50)(model, x, labels(model, x))
    torch.testing.assert_close(res.norms["l2"], torch.full((6,), 0.3, dtype=torch.float64))


def test_square_only_accepts_improvements() -> None:
    """The margin at the returned point is never above the margin at the initial stripes
    (same seed, same stripes): only improving proposals are accepted."""
    model = Linear(64, 10).eval()
    x = interior(8, seed=1)
    y = labels(model, x)

    def margin_at(xa: torch.Tensor) -> torch.Tensor:
        z = model(xa).detach()
        return z.gather(1, y[:, None])[:, 0] - z.scatter(1, y[:, None], -1e9).amax(1)

    m1 = margin_at(Square(0.05, max_queries=1)(model, x, y).x_adv)
    m20 = margin_at(Square(0.05, max_queries=20)(model, x, y).x_adv)
    m200 = margin_at(Square(0.05, max_queries=200)(model, x, y).x_adv)
    assert (m20 <= m1 + 1e-12).all() and (m200 <= m1 + 1e-12).all()
    assert (m200 < m1).all() and (m200 < 0).sum() > (m1 < 0).sum()


def test_dct_basis_is_orthonormal_and_low_frequency_first() -> None:
    d = _dct_matrix(8, torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64))
    atk = SimBA(basis="dct", freq_dims=2, stride=2)
    like = torch.zeros(1, dtype=torch.float64)
    order = atk._order(3, 2, 8, 8, torch.Generator().manual_seed(0), like.device)
    q = atk._direction(order[0], 2, 8, 8, d, d, like).flatten(1)  # all 128 directions
    torch.testing.assert_close(q @ q.T, torch.eye(128, dtype=torch.float64))
    rest = order % 64
    band = torch.maximum(rest // 8, rest % 8)
    assert (band[:, :8] < 2).all() and (band[:, 8:] >= 2).all()  # 2 channels x 2 x 2 first
    assert (band[:, 8:32] < 4).all()  # then the band [2, 4)
    assert not torch.equal(order[0], order[1])  # a random order per example


def test_simba_pixel_steps_are_single_pixels() -> None:
    """Each accepted pixel step moves one pixel by exactly +-step; queries = 1 + 1 or 2 per
    direction tried."""
    model = Linear(64, 10).eval()
    x = interior(4)
    res = SimBA(step=0.05, max_queries=40)(model, x, labels(model, x))
    delta = res.x_adv - x
    moved = delta.abs() > 1e-12
    torch.testing.assert_close(delta[moved].abs(), torch.full_like(delta[moved], 0.05))
    assert ((res.norms["l2"] ** 2 / 0.05 ** 2).round() == moved.flatten(1).sum(1)).all()
    assert (moved.flatten(1).sum(1) >= 1).all()


def test_simba_probability_never_rises() -> None:
    model = Linear(64, 10).eval()
    x = interior(6, seed=2)
    y = labels(model, x)
    p0 = model(x).softmax(1).gather(1, y[:, None]).detach()
    for basis in ("pixel", "dct"):
        res = SimBA(basis=basis, step=0.1, max_queries=60)(model, x, y)
        p = res.logits.softmax(1).gather(1, y[:, None])
        assert (p <= p0 + 1e-12).all() and (p < p0).all()
