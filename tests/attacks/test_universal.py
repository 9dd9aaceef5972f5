"""Universal perturbations: DeepFool's step in closed form, the eps-ball, and fooling rates
on held-out images against random noise of the same norm."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import advlab
from advlab.attacks.universal import UniversalPerturbation, deepfool_step, fooling_rate
from advlab.threat import lp_norm


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # noqa: ANN202
    """One thread: on a busy shared machine two OpenMP threads spin and run 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Linear(nn.Module):
    def __init__(self, k: int = 5, d: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(k, d, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(k, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_step_closed_form_on_a_linear_model(norm: str) -> None:
    # one DeepFool iteration on an affine classifier reaches the nearest boundary exactly:
    # l = argmin_k |f_k| / ||w_k||_q, r = (|f_l| + 1e-4) / ||w_l||_q^q |w_l|^(q-1) sign(w_l)
    model = Linear().eval()
    g = torch.Generator().manual_seed(1)
    x = 0.45 + 0.1 * torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    ref = model(x).argmax(1)
    r = deepfool_step(model, x, ref, None, norm, max_iter=1, overshoot=0.0)
    with torch.no_grad():
        z = model(x)
    want = torch.zeros_like(x)
    for i in range(len(x)):
        w = model.w - model.w[ref[i]]
        f = z[i] - z[i, ref[i]]
        q = w.norm(dim=1) if norm == "l2" else w.abs().sum(1)
        dist = (f.abs() + 1e-4) / q
        dist[ref[i]] = float("inf")
        k = dist.argmin()
        step = w[k] * dist[k] / q[k] if norm == "l2" else w[k].sign() * dist[k]
        want[i] = step.view_as(x[i])
    torch.testing.assert_close(r, want)
    assert (model(x + r).argmax(1) != ref).all()  # and it crosses


@pytest.mark.parametrize("norm, eps", [("linf", 0.2), ("l2", 3.0)])
def test_universal_within_eps_and_beats_random_noise(norm: str, eps: float, mnist_train,
                                                      mnist_test, mlp) -> None:
    x_fit, x_out = mnist_train[0][:200], mnist_test[0][:300]
    fit = UniversalPerturbation(eps=eps, norm=norm, max_passes=2)
    res = fit.fit(mlp, x_fit)
    assert res.delta.shape == (1, 1, 28, 28)
    assert lp_norm(res.delta, norm).item() <= eps * (1 + 1e-5)
    again = fit.fit(mlp, x_fit)
    assert torch.equal(res.delta, again.delta), "same seed, same perturbation"
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 1, 28, 28, generator=g)
    noise = noise.sign() * eps if norm == "linf" else noise * eps / noise.norm()
    base = fooling_rate(mlp, x_out, noise)
    rate = fooling_rate(mlp, x_out, res.delta)
    assert rate > base + 0.15, (rate, base)  # measured: 0.36 vs 0.07 (linf), 0.69 vs 0.04


def test_targeted_universal(mnist_train, mnist_test, mlp) -> None:
    x_fit, x_out = mnist_train[0][:200], mnist_test[0][:300]
    res = UniversalPerturbation(eps=0.2, max_passes=2).fit(mlp, x_fit, target=3)
    assert res.target == 3
    with torch.no_grad():
        clean = (mlp(x_out).argmax(1) == 3).float().mean().item()
    assert fooling_rate(mlp, x_out, res.delta, target=3) > clean + 0.5  # measured 0.88 vs 0.09


def test_attack_applies_one_perturbation_to_the_batch(mnist_test, mlp) -> None:
    x, y = mnist_test[0][:64], mnist_test[1][:64]
    res = advlab.attacks.get("universal", eps=0.15, max_passes=2)(mlp, x, y)
    v = res.info["delta"]
    assert v.shape == (1, 1, 28, 28) and v.abs().max() > 0
    torch.testing.assert_close(res.x_adv, (x + v).clamp(0, 1))
    t = (y + 1) % 10
    res = advlab.attacks.get("universal", eps=0.15, max_passes=1)(mlp, x, y, target=t)
    for c, v in res.info["delta"].items():
        rows = t == c
        torch.testing.assert_close(res.x_adv[rows], (x[rows] + v).clamp(0, 1))


def test_fooling_rate_definition() -> None:
    model = Linear().eval()
    x = 0.5 * torch.ones(4, 1, 4, 4, dtype=torch.float64)
    assert fooling_rate(model, x, torch.zeros(1, 1, 4, 4, dtype=torch.float64)) == 0.0
    pred = model(x).argmax(1)
    assert fooling_rate(model, x, torch.zeros_like(x[:1]), target=pred[0]) == 1.0
