"""L-BFGS attack: the minimal targeted perturbation of a linear model, the eps bound, target
selection, then strength on the zoo (against DeepFool, the paper's ordering)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import advlab
from advlab.attacks import LBFGS, DeepFool
from advlab.attacks.lbfgs import History
from testkit import Linear, linear_setup


def bfgs_matrix(pairs: list[tuple[np.ndarray, np.ndarray]], d: int) -> np.ndarray:
    """The inverse-Hessian estimate by the explicit BFGS recursion, from gamma I (gamma =
    s.y / y.y of the newest pair); pairs with s.y <= 0 skipped."""
    good = [(s, y) for s, y in pairs if s @ y > 1e-10]
    if not good:
        return np.eye(d)
    s, y = good[-1]
    h = np.eye(d) * (s @ y) / (y @ y)
    for s, y in good:
        rho = 1 / (s @ y)
        v = np.eye(d) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    return h


def test_two_loop_recursion_equals_the_bfgs_matrix() -> None:
    """Per example: its own number of pairs (0 to 5, memory 4, so one wraps around), one
    pair with negative curvature; H g equals the explicit matrix product."""
    g = torch.Generator().manual_seed(0)
    n, d, m = 6, 5, 4
    mem = History(n, d, m, torch.zeros(1, dtype=torch.float64))
    pairs: list[list] = [[] for _ in range(n)]
    for step in range(5):
        rows = torch.arange(step, n)  # example i gets min(i, 5) pairs... all but the first
        s = torch.randn(len(rows), d, generator=g, dtype=torch.float64)
        a = torch.randn(d, d, generator=g, dtype=torch.float64)
        y = s @ (a @ a.T + torch.eye(d, dtype=torch.float64))  # positive curvature
        if step == 2:
            y[0] = -s[0]  # one pair with s.y < 0: must be ignored
        mem.push(rows, s, y)
        for k, i in enumerate(rows.tolist()):
            pairs[i].append((s[k].numpy(), y[k].numpy()))
    grad = torch.randn(n, d, generator=g, dtype=torch.float64)
    got = mem.apply(grad, torch.arange(n))
    for i in range(n):
        want = bfgs_matrix(pairs[i][-m:], d) @ grad[i].numpy()
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-9, atol=1e-12)


def test_linear_reaches_the_minimal_targeted_distance() -> None:
    """Binary linear model, target = the other class: the smallest perturbation is
    |f(x)| / ||w||_2; the search over c ends just beyond it."""
    model, x, y, f, w = linear_setup(n=5)
    res = LBFGS(search_steps=14)(model, x, y, target=1 - y)
    assert res.success.all()
    dmin = f / w.norm()
    assert (res.norms["l2"] >= dmin * (1 - 1e-6)).all()
    assert (res.norms["l2"] <= dmin * 1.05).all(), res.norms["l2"] / dmin
    assert (res.info["c"] > 0).all()


def test_eps_bound_is_kept_and_feasible_targets_reached() -> None:
    """The lecture's |r_i| < eps: with norm='linf' the perturbation stays in the box; the
    examples whose minimal Linf distance |f|/||w||_1 is well inside eps succeed."""
    model, x, y, f, w = linear_setup(n=8)
    eps = 0.03
    res = LBFGS(eps=eps, norm="linf")(model, x, y, target=1 - y)
    assert (res.norms["linf"] <= eps + 1e-12).all()
    dmin = f / w.abs().sum()
    feasible = dmin < 0.9 * eps
    assert feasible.any() and (dmin > eps).any()
    assert res.success[feasible].all() and not res.success[dmin > eps].any()


def test_targets_chosen_by_the_base() -> None:
    model = Linear(16, 6, seed=4, bias_scale=0.1).eval()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64) * 0.2 + 0.4
    with torch.no_grad():
        y = model(x).argmax(1)
    res = LBFGS(target_selection="next")(model, x, y)
    assert torch.equal(res.target, (y + 1) % 6)
    assert res.success.all()


def test_bad_settings() -> None:
    for kw in ({"norm": "l1"}, {"c0": 0.0}, {"eps": -1.0}, {"target_selection": "far"}):
        with pytest.raises(advlab.errors.ThreatModelError):
            LBFGS(**kw)


def test_mlp_strength_against_deepfool(mlp, mnist_test) -> None:
    """100% targeted success; aimed at the class DeepFool reaches, the mean L2 is within 1.3x
    of DeepFool's (Szegedy et al.'s and Moosavi-Dezfooli et al.'s ordering)."""
    x, y = mnist_test[0][:12], mnist_test[1][:12]
    with torch.no_grad():
        ok = mlp(x).argmax(1) == y
    x, y = x[ok], y[ok]
    df = DeepFool()(mlp, x, y)
    assert df.success.all()
    t = df.logits.argmax(1)
    res = LBFGS()(mlp, x, y, target=t)
    assert res.success.all()
    with torch.no_grad():
        assert torch.equal(mlp(res.x_adv).argmax(1), t)
    assert res.norms["l2"].mean() <= 1.3 * df.norms["l2"].mean()
    rand = LBFGS(seed=1)(mlp, x, y)
    assert rand.success.all()
