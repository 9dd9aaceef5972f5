"""SimBA: exact properties of its random search (the DCT basis, single-pixel steps)."""
from __future__ import annotations

import torch

import testkit
from advlab.attacks.blackbox.simba import SimBA, _dct_matrix


def linear() -> testkit.Linear:
    return testkit.Linear(64, 10, bias_scale=0.0, weight_scale=0.3).eval()


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
    model = linear()
    x = testkit.interior(4)
    res = SimBA(step=0.05, max_queries=40)(model, x, testkit.predicted(model, x))
    delta = res.x_adv - x
    moved = delta.abs() > 1e-12
    torch.testing.assert_close(delta[moved].abs(), torch.full_like(delta[moved], 0.05))
    assert ((res.norms["l2"] ** 2 / 0.05 ** 2).round() == moved.flatten(1).sum(1)).all()
    assert (moved.flatten(1).sum(1) >= 1).all()


def test_simba_probability_never_rises() -> None:
    model = linear()
    x = testkit.interior(6, seed=2)
    y = testkit.predicted(model, x)
    p0 = model(x).softmax(1).gather(1, y[:, None]).detach()
    for basis in ("pixel", "dct"):
        res = SimBA(basis=basis, step=0.1, max_queries=60)(model, x, y)
        p = res.logits.softmax(1).gather(1, y[:, None])
        assert (p <= p0 + 1e-12).all() and (p < p0).all()
