"""Projections, norms and random starts against independent numpy references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab import threat
from advlab.errors import ThreatModelError


def np_project_l1(v: np.ndarray, eps: float) -> np.ndarray:
    """Projection onto the L1 ball by bisection on the soft threshold (not the sort algorithm)."""
    if np.abs(v).sum() <= eps:
        return v
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        theta = (lo + hi) / 2
        if np.maximum(np.abs(v) - theta, 0).sum() > eps:
            lo = theta
        else:
            hi = theta
    return np.sign(v) * np.maximum(np.abs(v) - hi, 0)


def np_project(v: np.ndarray, eps: float, norm: str) -> np.ndarray:
    if norm == "linf":
        return np.clip(v, -eps, eps)
    if norm == "l2":
        n = np.linalg.norm(v)
        return v if n <= eps else v * eps / n
    return np_project_l1(v, eps)


arrays = st.integers(0, 2**31 - 1).map(
    lambda s: np.random.default_rng(s).normal(size=(3, 1, 4, 5)) * np.random.default_rng(s).
    uniform(0.01, 3))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@settings(max_examples=40, deadline=None)
@given(v=arrays, eps=st.floats(0.0, 4.0))
def test_projection_matches_numpy(norm: str, v: np.ndarray, eps: float) -> None:
    eps_t = torch.tensor([eps, eps / 2, 0.0], dtype=torch.float64)
    got = threat.ball(norm).project(torch.from_numpy(v), eps_t).numpy()
    for i in range(3):
        want = np_project(v[i].ravel(), float(eps_t[i]), norm).reshape(v[i].shape)
        np.testing.assert_allclose(got[i], want, atol=1e-7)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_is_idempotent_and_inside(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.rand(16, generator=g, dtype=torch.float64) * 3
    b = threat.ball(norm)
    p = b.project(v, eps)
    assert (b.norm_of(p) <= eps + 1e-9).all()
    torch.testing.assert_close(b.project(p, eps), p)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_start_inside_ball_and_seeded(norm: str) -> None:
    like = torch.zeros(64, 1, 6, 6)
    eps = torch.linspace(0, 2, 64)
    b = threat.ball(norm)
    r1 = b.random(like, eps, torch.Generator().manual_seed(3))
    r2 = b.random(like, eps, torch.Generator().manual_seed(3))
    assert torch.equal(r1, r2)
    assert (b.norm_of(r1) <= eps * (1 + 1e-5) + 1e-7).all()
    assert (b.norm_of(r1[1:]) > 0).all()


def test_random_linf_is_uniform() -> None:
    r = threat.LinfBall().random(torch.zeros(1, 1, 100, 100), torch.tensor([0.5]),
                                 torch.Generator().manual_seed(0))
    assert abs(r.mean().item()) < 0.01
    assert abs(r.var().item() - 0.5**2 / 3) < 0.003  # variance of U(-eps, eps)


def test_steepest_directions() -> None:
    g = torch.tensor([[[[3.0, -4.0, 0.0, 1.0]]]])
    torch.testing.assert_close(threat.LinfBall().steepest(g), torch.tensor([[[[1.0, -1, 0, 1]]]]))
    torch.testing.assert_close(threat.L2Ball().steepest(g), g / g.norm())
    d = threat.L1Ball(sparsity=0.5).steepest(g)  # top half of |g|: -4 and 3
    torch.testing.assert_close(d, torch.tensor([[[[0.5, -0.5, 0.0, 0.0]]]]))
    assert threat.L1Ball().norm_of(d).item() == pytest.approx(1.0)


def test_lp_norms_match_numpy() -> None:
    d = torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    flat = d.flatten(1).numpy()
    for norm, o in (("linf", np.inf), ("l2", 2), ("l1", 1)):
        np.testing.assert_allclose(threat.lp_norm(d, norm).numpy(),
                                   np.linalg.norm(flat, ord=o, axis=1), rtol=1e-6)
    assert threat.lp_norm(d.clamp_min(0), "l0").tolist() == (flat > 0).sum(1).tolist()


def test_project_box_keeps_ball_and_box() -> None:
    x = torch.rand(8, 1, 5, 5, generator=torch.Generator().manual_seed(2))
    x_adv = x + torch.randn(8, 1, 5, 5, generator=torch.Generator().manual_seed(3))
    eps = torch.full((8,), 0.7)
    for norm in ("linf", "l2", "l1"):
        b = threat.ball(norm)
        out = threat.project_box(x, x_adv, eps, b)
        assert out.min() >= 0 and out.max() <= 1
        assert (b.norm_of(out - x) <= eps + 1e-6).all()


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_as_eps_rejects_bad_values(bad: float) -> None:
    with pytest.raises(ThreatModelError):
        threat.as_eps(bad, 3, torch.zeros(1))


def test_as_eps_shapes() -> None:
    assert threat.as_eps(0.3, 4, torch.zeros(1)).shape == (4,)
    assert threat.as_eps(torch.tensor([0.1, 0.2]), 2, torch.zeros(1)).tolist() == \
        pytest.approx([0.1, 0.2])
    with pytest.raises(ThreatModelError):
        threat.as_eps(torch.tensor([0.1, 0.2]), 3, torch.zeros(1))
    with pytest.raises(ThreatModelError):
        threat.ball("l3")


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_region_projects_like_project_box(norm: str) -> None:
    """The loop's feasible set: the same points as project_box, in place or not, by rows."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(5, 1, 4, 4, generator=g)
    v = x + torch.randn(5, 1, 4, 4, generator=g)
    eps = torch.rand(5, generator=g) + 0.1
    b = threat.ball(norm)
    feasible = threat.region(x, eps, b)
    want = threat.project_box(x, v, eps, b)
    torch.testing.assert_close(feasible.project(v), want)
    torch.testing.assert_close(feasible.project_(v.clone()), want)
    rows = torch.tensor([3, 0])
    torch.testing.assert_close(feasible.project_(v[rows].clone(), rows), want[rows])


def test_box_region_clips_only() -> None:
    x = torch.full((2, 1, 2, 2), 0.5)
    v = torch.tensor([-0.5, 0.25, 0.75, 1.5]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    box = threat.Box(x, torch.full((2,), 0.1), threat.ball("linf"))
    torch.testing.assert_close(box.project(v), v.clamp(0, 1))
    w = v.clone()
    assert box.project_(w) is w and torch.equal(w, v.clamp(0, 1))


def _clip_grad(x: list[float], lo, hi) -> list[float]:
    v = torch.tensor(x, requires_grad=True)
    (g,) = torch.autograd.grad((threat.clip(v, lo, hi) * torch.arange(1.0, len(x) + 1)).sum(), v)
    return g.tolist()


def test_clip_gradient_convention_is_pinned() -> None:
    """d clip / dx is 1 on the closed interval (boundary included) and 0 outside, with number
    and tensor bounds, whatever torch's own clamp does at the boundary (it changed in 2.14)."""
    x = [-0.5, 0.0, 0.5, 1.0, 1.5]
    w = [0.0, 2.0, 3.0, 4.0, 0.0]  # the upstream weights 1..5 where the gradient passes
    assert _clip_grad(x, 0.0, 1.0) == w
    assert _clip_grad(x, torch.zeros(5), torch.ones(5)) == w
    assert _clip_grad(x, 0.0, None) == [0.0, 2.0, 3.0, 4.0, 5.0]
    assert _clip_grad(x, None, 1.0) == [1.0, 2.0, 3.0, 4.0, 0.0]
    v = torch.tensor(x, requires_grad=True)
    (g,) = torch.autograd.grad(threat.clip_box(v).sum(), v)
    assert g.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_clip_forward_equals_clamp_and_lets_boundary_pixels_move() -> None:
    x = torch.tensor([[-0.2, 0.0, 0.3, 1.0, 1.7]])
    assert torch.equal(threat.clip_box(x.clone().requires_grad_(True)).detach(), x.clamp(0, 1))
    assert torch.equal(threat.clip(x, -0.1, 0.9), x.clamp(-0.1, 0.9))
    # x' = clip(x + delta) at delta = 0: every pixel, those at 0 and 1 included, gets the
    # loss gradient, so one descent step on -x'.sum() moves the pixel at 0 inward
    delta = torch.zeros_like(x, requires_grad=True)
    (g,) = torch.autograd.grad((-threat.clip_box(x + delta)).sum(), delta)
    assert g.tolist() == [[0.0, -1.0, -1.0, -1.0, 0.0]]
    assert (threat.clip_box(x - 0.1 * g) > x.clamp(0, 1))[0, 1]


def test_linf_projection_gradient_on_the_ball_boundary() -> None:
    eps = torch.tensor([0.25])
    r = torch.tensor([[-0.5, -0.25, 0.0, 0.25, 0.5]], requires_grad=True)
    (g,) = torch.autograd.grad(threat.ball("linf").project(r, eps).sum(), r)
    assert g.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]
