"""DeepFool: the closed-form minimal perturbation of linear models, then strength on the zoo."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import advlab
from advlab.attacks import FGSM, DeepFool
from advlab.attacks.deepfool import TINY


class Linear(nn.Module):
    """logits = W flat(x) + b (float64), gradients in closed form."""

    def __init__(self, d: int, k: int, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(k, d, generator=g, dtype=torch.float64) * scale)
        self.b = nn.Parameter(torch.randn(k, generator=g, dtype=torch.float64) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def setup(k: int, n: int = 6, d: int = 16, seed: int = 0):
    model = Linear(d, k, seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) * 0.2 + 0.4
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly classified by construction
    return model, x, y


def closed_form(model: Linear, x: torch.Tensor, y: torch.Tensor, norm: str,
                overshoot: float = 0.02) -> torch.Tensor:
    """One DeepFool step is exact for a linear model: the closest hyperplane Z_k = Z_y."""
    with torch.no_grad():
        z = model(x)
        w = model.w[None] - model.w[y][:, None]  # n x K x D, w_k - w_y
        f = z - z.gather(1, y[:, None])  # n x K
        q = 2 if norm == "l2" else 1
        wn = w.norm(p=q, dim=2)
        dist = (f.abs() / wn).scatter(1, y[:, None], float("inf"))
        k = dist.argmin(1)
        i = torch.arange(len(x))
        wl, fl, nl = w[i, k], f[i, k].abs() + TINY, wn[i, k]
        r = fl[:, None] * (wl / nl[:, None] ** 2 if q == 2 else wl.sign() / nl[:, None])
        return x + (1 + overshoot) * r.view_as(x)


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_closed_form(k: int, norm: str) -> None:
    model, x, y = setup(k)
    want = closed_form(model, x, y, norm)
    assert want.min() > 0 and want.max() < 1  # no clipping in this set-up
    res = DeepFool(norm=norm, candidates=None)(model, x, y)
    torch.testing.assert_close(res.x_adv, want)
    assert res.success.all()
    assert (res.info["iterations"] == 1).all()


def test_binary_is_minus_f_over_w_norm() -> None:
    """Binary linear f(x) = w.x + b: r = -f(x) w / ||w||^2 (the paper's eq. 3)."""
    model, x, y = setup(2, seed=3)
    res = DeepFool(overshoot=0.0)(model, x, y)
    with torch.no_grad():
        w = (model.w[1] - model.w[0])
        f = x.flatten(1) @ w + (model.b[1] - model.b[0])
        # the same step written with the sign of f: r = -(f + sign(f) tiny) w / ||w||^2
        r = -(f + f.sign() * TINY)[:, None] * w / w.pow(2).sum()
    torch.testing.assert_close(res.x_adv, x + r.view_as(x))
    torch.testing.assert_close(res.norms["l2"], (f.abs() + TINY) / w.norm())


def test_already_misclassified_is_returned_unchanged() -> None:
    model, x, y = setup(5)
    wrong = (y + 1) % 5
    res = DeepFool()(model, x, wrong)
    assert torch.equal(res.x_adv, x) and res.success.all()


def test_candidates_limit_the_classes() -> None:
    """With 2 candidates only the runner-up class of the clean logits is considered."""
    model, x, y = setup(5, seed=4)
    res = DeepFool(candidates=2)(model, x, y)
    with torch.no_grad():
        runner_up = model(x).scatter(1, y[:, None], float("-inf")).argmax(1)
        assert torch.equal(model(res.x_adv).argmax(1)[res.success], runner_up[res.success])


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        DeepFool(norm="l1")
    with pytest.raises(advlab.errors.ThreatModelError):
        DeepFool(candidates=1)


def test_mlp_strength_and_paper_ratio(mlp, mnist_test) -> None:
    """100% success re-checked; ||r||2/||x||2 near the paper's 0.1-0.2 on MNIST; far below
    FGSM's L2."""
    x, y = mnist_test[0][:40], mnist_test[1][:40]
    with torch.no_grad():
        ok = mlp(x).argmax(1) == y
    x, y = x[ok], y[ok]
    res = DeepFool()(mlp, x, y)
    assert res.success.all()
    rho = (res.norms["l2"] / x.flatten(1).norm(dim=1)).mean().item()
    assert 0.05 < rho < 0.25, rho
    fgsm = FGSM(eps=0.3)(mlp, x, y)
    assert res.norms["l2"].median() < 0.5 * fgsm.norms["l2"].median()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_cnn_full_success(cnn, mnist_test, norm: str) -> None:
    x, y = mnist_test[0][:10], mnist_test[1][:10]
    res = DeepFool(norm=norm)(cnn, x, y)
    assert res.success.all()
    if norm == "linf":
        assert res.norms["linf"].median() < 0.3
