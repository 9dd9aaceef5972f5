"""L-BFGS attack: the minimal targeted perturbation of a linear model, the eps bound, target
selection, then strength on the zoo (against DeepFool, the paper's ordering)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import advlab
from advlab.attacks import LBFGS, DeepFool


class Linear(nn.Module):
    def __init__(self, d: int, k: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(k, d, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(k, generator=g, dtype=torch.float64) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def linear_setup(seed: int = 0, n: int = 5):
    model = Linear(16, 2, seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) * 0.2 + 0.4
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = model.w[1] - model.w[0]
    return model, x, y, (z[:, 1] - z[:, 0]).abs().detach(), w.detach()


def test_linear_reaches_the_minimal_targeted_distance() -> None:
    """Binary linear model, target = the other class: the smallest perturbation is
    |f(x)| / ||w||_2; the search over c ends just beyond it."""
    model, x, y, f, w = linear_setup()
    res = LBFGS(search_steps=14)(model, x, y, target=1 - y)
    assert res.success.all()
    dmin = f / w.norm()
    assert (res.norms["l2"] >= dmin * (1 - 1e-6)).all()
    assert (res.norms["l2"] <= dmin * 1.05).all(), res.norms["l2"] / dmin
    assert (res.info["c"] > 0).all()


def test_eps_bound_is_kept_and_feasible_targets_reached() -> None:
    """The lecture's |r_i| < eps: with norm='linf' the perturbation stays in the box; the
    examples whose minimal Linf distance |f|/||w||_1 is well inside eps succeed."""
    model, x, y, f, w = linear_setup(seed=0, n=8)
    eps = 0.03
    res = LBFGS(eps=eps, norm="linf")(model, x, y, target=1 - y)
    assert (res.norms["linf"] <= eps + 1e-12).all()
    dmin = f / w.abs().sum()
    feasible = dmin < 0.9 * eps
    assert feasible.any() and (dmin > eps).any()
    assert res.success[feasible].all() and not res.success[dmin > eps].any()


def test_targets_chosen_by_the_base() -> None:
    model = Linear(16, 6, seed=4).eval()
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
