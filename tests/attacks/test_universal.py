"""Universal perturbations: DeepFool's step in closed form, the eps-ball, and fooling rates
on held-out images against random noise of the same norm."""
from __future__ import annotations

import pytest
import torch

import advlab
from advlab.attacks.deepfool import DeepFool
from advlab.attacks.universal import (
    UniversalPerturbation,
    fooling_rate,
    minimal_step,
    targeted_step,
)
from advlab.threat import lp_norm
from testkit import Linear


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_targeted_step_closed_form_on_a_linear_model(norm: str) -> None:
    # one linearised step towards t on an affine classifier: f = z_t - z_k, w = W_t - W_k,
    # r = (|f| + 1e-4) w / ||w||_2^2 (L2) or (|f| + 1e-4) sign(w) / ||w||_1 (Linf)
    model = Linear(16, 5).eval()
    g = torch.Generator().manual_seed(1)
    x = 0.45 + 0.1 * torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        z = model(x)
    pred = z.argmax(1)
    t = (pred + 2) % 5
    r = targeted_step(model, x, t, norm, max_iter=1, overshoot=0.0)
    want = torch.zeros_like(x)
    for i in range(len(x)):
        w = (model.w[t[i]] - model.w[pred[i]]).detach()
        f = (z[i, t[i]] - z[i, pred[i]]).abs() + 1e-4
        want[i] = (f * w / w.norm() ** 2 if norm == "l2" else f * w.sign() / w.abs().sum()
                   ).view_as(x[i])
    torch.testing.assert_close(r, want)
    with torch.no_grad():  # the linearisation is exact: z_t = z_k on the new point
        z2 = model(x + r)
    torch.testing.assert_close(z2.gather(1, t[:, None]) - z2.gather(1, pred[:, None]),
                               torch.full((6, 1), 1e-4, dtype=x.dtype))


def test_untargeted_inner_step_is_deepfool(mnist_test, mlp) -> None:
    x, y = mnist_test[0][:16], mnist_test[1][:16]
    r = minimal_step(mlp, x, y, None, "l2", max_iter=10, overshoot=0.02)
    want = DeepFool(norm="l2", overshoot=0.02, max_iter=10)(mlp, x, y).x_adv - x
    torch.testing.assert_close(r, want)


def test_linf_ball_takes_the_papers_l2_deepfool_step(mnist_test, mlp) -> None:
    # Algorithm 1: delta v_i = argmin ||r||_2 (L2 DeepFool), then the projection onto the
    # Linf ball; one image, one pass from v = 0 gives v = clip(r, -eps, eps)
    x = mnist_test[0][:1]
    with torch.no_grad():
        ref = mlp(x).argmax(1)
    r = DeepFool(norm="l2", overshoot=0.02, max_iter=10)(mlp, x, ref).x_adv - x
    v = UniversalPerturbation(eps=0.1, max_passes=1).fit(mlp, x).delta
    torch.testing.assert_close(v, r.clamp(-0.1, 0.1))
    v_linf = UniversalPerturbation(eps=0.1, max_passes=1, step_norm="linf").fit(mlp, x).delta
    assert not torch.allclose(v, v_linf)


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
    assert rate > base + 0.15, (rate, base)  # measured: 0.38 vs 0.07 (linf), 0.69 vs 0.04


def test_sgd_universal(mnist_train, mnist_test, mlp) -> None:
    x_fit, x_out = mnist_train[0][:200], mnist_test[0][:300]
    res = UniversalPerturbation(eps=0.2, method="sgd").fit(mlp, x_fit)
    assert res.delta.abs().max().item() <= 0.2 + 1e-6
    noise = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)).sign() * 0.2
    assert fooling_rate(mlp, x_out, res.delta) > fooling_rate(mlp, x_out, noise) + 0.4


def test_targeted_universal(mnist_train, mnist_test, mlp) -> None:
    x_fit, x_out = mnist_train[0][:200], mnist_test[0][:300]
    res = UniversalPerturbation(eps=0.2, max_passes=2).fit(mlp, x_fit, target=3)
    assert res.target == 3
    with torch.no_grad():
        clean = (mlp(x_out).argmax(1) == 3).float().mean().item()
    assert fooling_rate(mlp, x_out, res.delta, target=3) > clean + 0.5  # measured 0.93 vs 0.09


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
    model = Linear(16, 5).eval()
    x = 0.5 * torch.ones(4, 1, 4, 4, dtype=torch.float64)
    assert fooling_rate(model, x, torch.zeros(1, 1, 4, 4, dtype=torch.float64)) == 0.0
    pred = model(x).argmax(1)
    assert fooling_rate(model, x, torch.zeros_like(x[:1]), target=pred[0]) == 1.0
