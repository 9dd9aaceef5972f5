"""FAB: the exact projection onto a hyperplane inside the box (against scipy's LP solver and
the QP's KKT conditions), the exact minimal perturbation of a linear model, FAB-T within eps,
then strength on the zoo against DeepFool, and FAB-T inside autoattack."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

import advlab
from advlab.attacks import FAB, FABT, DeepFool
from advlab.attacks.fab import plane_step
from testkit import Linear


def _problem(seed: int, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, d, generator=g, dtype=torch.float64)
    p = torch.rand(1, d, generator=g, dtype=torch.float64)
    r = torch.randn(1, generator=g, dtype=torch.float64) * 0.5
    return w, r, p


def _linf_lp(w: np.ndarray, r: float, p: np.ndarray) -> float:
    """min t s.t. <w, d> = r, |d_i| <= t, 0 <= p + d <= 1 (variables d, t)."""
    d = len(w)
    c = np.r_[np.zeros(d), 1.0]
    a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0.0][None],
                  b_eq=[r], bounds=[(-pi, 1 - pi) for pi in p] + [(0, None)])
    return res.fun if res.status == 0 else float("nan")


@pytest.mark.parametrize("seed", range(8))
def test_linf_projection_matches_the_lp(seed: int) -> None:
    w, r, p = _problem(seed)
    d = plane_step(w, r, p, "linf")
    best = _linf_lp(w[0].numpy(), r.item(), p[0].numpy())
    if np.isnan(best):  # unreachable inside the box: every coordinate at its bound
        assert ((p + d == 0) | (p + d == 1) | (w == 0)).all()
        return
    torch.testing.assert_close((w * d).sum(1), r)
    assert ((p + d) >= -1e-12).all() and ((p + d) <= 1 + 1e-12).all()
    assert d.abs().max().item() == pytest.approx(best, rel=1e-7, abs=1e-10)


def _l2_qp(w: np.ndarray, r: float, p: np.ndarray) -> np.ndarray | None:
    """min ||d||_2 s.t. <w, d> = r, 0 <= p + d <= 1, from its KKT conditions:
    d = clip(lam w, -p, 1 - p) with h(lam) = <w, d(lam)> = r, h non-decreasing: bisection."""
    def h(lam: float) -> float:
        return float(w @ np.clip(lam * w, -p, 1 - p))

    lo, hi = -1e8, 1e8
    if not h(lo) <= r <= h(hi):
        return None
    for _ in range(300):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if h(mid) < r else (lo, mid)
    return np.clip(lo * w, -p, 1 - p)


@pytest.mark.parametrize("seed", range(8))
def test_l2_projection_matches_the_qp(seed: int) -> None:
    w, r, p = _problem(seed)
    d = plane_step(w, r, p, "l2")
    ref = _l2_qp(w[0].numpy(), r.item(), p[0].numpy())
    if ref is None:  # unreachable inside the box: every coordinate at its bound
        assert ((p + d == 0) | (p + d == 1) | (w == 0)).all()
        return
    torch.testing.assert_close((w * d).sum(1), r)
    np.testing.assert_allclose(d[0].numpy(), ref, atol=1e-9)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_in_float32_with_weights_over_nine_orders_of_magnitude(norm: str) -> None:
    """Gradients of a real net span many orders of magnitude; the projection stays inside
    the box and on the plane in float32 (a closed form from cumulative sums of a_i m_i,
    total minus prefix, cancelled there and threw L2 steps of 1e30 out of the box)."""
    g = torch.Generator().manual_seed(0)
    n, d = 64, 784
    w = torch.randn(n, d, generator=g) * torch.logspace(-9, 0, d)[torch.randperm(d, generator=g)]
    p = torch.rand(n, d, generator=g)
    room = torch.where(w > 0, 1 - p, p)
    r = 0.9 * (w.abs() * room).sum(1)  # reachable, close to the box's limit
    step = plane_step(w, r, p, norm)
    assert ((p + step) >= 0).all() and ((p + step) <= 1).all()
    torch.testing.assert_close((w * step).sum(1), r, rtol=1e-5, atol=1e-5)


def test_projection_without_the_box_is_the_closed_form() -> None:
    """Far from the box's faces: Linf d = r sign(w) / ||w||_1, L2 d = r w / ||w||_2^2."""
    w, r, _ = _problem(0)
    p = torch.full_like(w, 0.5)
    r = r * 0.01
    torch.testing.assert_close(plane_step(w, r, p, "linf"), r * w.sign() / w.abs().sum())
    torch.testing.assert_close(plane_step(w, r, p, "l2"), r * w / w.pow(2).sum())


@pytest.mark.parametrize("norm, q", [("linf", 1), ("l2", 2)])
def test_linear_model_minimal_perturbation(norm: str, q: int) -> None:
    """Two classes, linear: the minimal p-norm perturbation is |f| / ||w||_q; FAB reaches it
    within the overshoot (its first step lands eta times beyond the boundary, then the
    step-backs walk toward it)."""
    model = Linear(16, 2, seed=1, bias_scale=0.1).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 0.1 + 0.45
    with torch.no_grad():
        z = model(x)
        w = model.w[1] - model.w[0]
    y = z.argmax(1)
    exact = (z[:, 1] - z[:, 0]).abs() / w.norm(p=q)
    res = FAB(norm=norm, steps=30)(model, x, y)
    assert res.success.all()
    assert (res.norms[norm] >= exact * (1 - 1e-9)).all()
    assert (res.norms[norm] <= exact * 1.05 + 1e-9).all()
    torch.testing.assert_close(res.info["norm"], res.norms[norm])


def test_targets_are_refused() -> None:
    model = Linear(16, 5, seed=3, bias_scale=0.1).eval()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    for attack in (FAB(), FABT()):
        with pytest.raises(advlab.errors.ThreatModelError, match="untargeted"):
            attack(model, x, y, target=(y + 1) % 5)


def test_fab_t_respects_eps_and_returns_x_where_it_fails() -> None:
    model = Linear(16, 5, seed=5, bias_scale=0.1).eval()
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    free = FAB(steps=30)(model, x, y)
    eps = free.norms["linf"].median().item()
    res = FABT(eps=eps, steps=30)(model, x, y)
    assert (res.norms["linf"] <= eps + 1e-12).all()
    assert res.success.any() and not res.success.all()
    assert torch.equal(res.x_adv[~res.success], x[~res.success])


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        FAB(norm="l1")
    with pytest.raises(advlab.errors.ThreatModelError):
        FABT(n_targets=0)
    with pytest.raises(advlab.errors.ThreatModelError):
        FAB(eta=0.5)


def test_cnn_strength(cnn, mnist_test) -> None:
    """Untargeted Linf FAB on mnist-cnn: 100% success, with a median Linf norm no larger
    than DeepFool-Linf's on the same images (FAB minimises the norm, DeepFool stops at the
    first crossing)."""
    x, y = mnist_test[0][:16], mnist_test[1][:16]
    with torch.no_grad():
        ok = cnn(x).argmax(1) == y
    x, y = x[ok], y[ok]
    res = FAB(steps=20)(cnn, x, y)
    assert res.success.all()
    df = DeepFool(norm="linf")(cnn, x, y)
    assert res.norms["linf"].median() <= df.norms["linf"].median()


def test_fab_t_in_the_ensemble(cnn, mnist_test) -> None:
    """FAB-T is found by autoattack (registered with the norm) and runs after APGD-T."""
    assert "fab-t" in advlab.attacks.AutoAttack().resolve()[0]
    x, y = mnist_test[0][:8], mnist_test[1][:8]
    res = FABT(eps=0.3, steps=10, n_targets=2)(cnn, x, y)
    assert res.success.float().mean() >= 0.75
