"""Transfer attacks: the kernel and the transforms against their formulas, the bare member
equal to MI-FGSM of the shared loop, NI's look-ahead and SI's scales seen by a spy model,
VMI's zero variance on a linear objective, the ensemble's mean, and transfer on the zoo."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import advlab
from advlab.attacks import MIFGSM, Ensemble, TransferAttack
from advlab.attacks.transfer import diverse, gaussian_kernel, smooth
from testkit import linear_setup


def test_gaussian_kernel_matches_numpy() -> None:
    t = np.linspace(-3, 3, 5)
    k1 = np.exp(-t * t / 2)
    want = np.outer(k1, k1) / np.outer(k1, k1).sum()
    np.testing.assert_allclose(gaussian_kernel(5).numpy(), want, rtol=1e-12)


def test_smoothing_a_point_gives_the_kernel() -> None:
    g = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    g[0, :, 4, 4] = 1.0
    out = smooth(g, gaussian_kernel(5))
    for c in range(2):
        torch.testing.assert_close(out[0, c, 2:7, 2:7], gaussian_kernel(5))
    assert out.sum() == pytest.approx(2.0)


def test_diversity_shrinks_and_pads() -> None:
    x = torch.rand(3, 1, 20, 20, generator=torch.Generator().manual_seed(0)) + 0.5
    gen = torch.Generator().manual_seed(1)
    assert diverse(x, 0.0, 0.8, gen) is x
    out = diverse(x, 1.0, 0.8, gen)
    assert out.shape == x.shape
    rows = (out[0, 0] != 0).any(1).nonzero().squeeze(1)
    cols = (out[0, 0] != 0).any(0).nonzero().squeeze(1)
    side = len(rows)
    assert 16 <= side < 20 and len(cols) == side  # a contiguous shrunk copy, zeros around
    assert rows[-1] - rows[0] + 1 == side


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_bare_member_is_mifgsm(tiny, loss: str) -> None:
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(6)
    a = TransferAttack(0.1, steps=5, loss=loss)(tiny, x, y)
    b = MIFGSM(0.1, steps=5, loss=loss, early_stop=False)(tiny, x, y)
    torch.testing.assert_close(a.x_adv, b.x_adv, rtol=0, atol=1e-6)


class Spy(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.model(x)


def test_nesterov_looks_ahead_and_si_scales() -> None:
    model, x, y, _, w = linear_setup(n=2)
    spy = Spy(model).eval()
    TransferAttack(0.05, steps=2, nesterov=True, scales=3)(spy, x, y)
    seen = spy.seen[:-1]  # the attack's passes, before the base's success check
    assert len(seen) == 6  # 2 steps x 3 scales
    for i in range(3):
        torch.testing.assert_close(seen[i], x / 2 ** i)  # step 1 at x: g_0 = 0
    alpha = 0.05 / 2
    x1 = seen[3]  # step 2 at the look-ahead x_1 + alpha * mu * g_1, g_1 = G / ||G||_1
    sign = torch.where(y == 0, 1.0, -1.0).to(x.dtype)  # CE ascends towards the other class
    step1 = x + alpha * (sign[:, None] * w).sign().view_as(x)
    ahead = x1 - step1
    assert (ahead.flatten(1).abs().sum(1) - alpha).abs().max() < 1e-9  # alpha * ||g_1||_1
    torch.testing.assert_close(seen[4], x1 / 2)


def test_vmi_variance_vanishes_on_a_linear_objective() -> None:
    """Two-class linear model, margin loss: the gradient is the same everywhere, so the
    neighbourhood's mean gradient minus the gradient is 0 and VMI equals MI."""
    model, x, y, _, _ = linear_setup(n=4)
    a = TransferAttack(0.05, steps=4, variance=6, loss="margin")(model, x, y)
    b = TransferAttack(0.05, steps=4, loss="margin")(model, x, y)
    torch.testing.assert_close(a.x_adv, b.x_adv)


def test_ensemble_is_the_weighted_mean_of_logits(tiny_factory) -> None:
    m1, m2 = tiny_factory(0), tiny_factory(1)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ens = Ensemble([m1, m2], weights=[1.0, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(ens(x), 0.25 * m1(x) + 0.75 * m2(x))
    assert not ens.training and not m1.training
    res = TransferAttack(0.1, steps=3)(ens, x, torch.arange(3))
    assert res.x_adv.shape == x.shape
    with pytest.raises(advlab.errors.ThreatModelError):
        Ensemble([m1], weights=[-1.0])
    with pytest.raises(advlab.errors.ThreatModelError):
        Ensemble([])


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        TransferAttack(kernel=4)
    with pytest.raises(advlab.errors.ThreatModelError):
        TransferAttack(diversity=1.5)


def test_cnn_to_mlp_transfer(cnn, mlp, mnist_test) -> None:
    """Crafted on the CNN at eps 0.3, the examples fool the CNN and transfer to the MLP
    far above its clean error (measured: 0.1 clean error, transfer in benchmarks/transfer.py)."""
    x, y = mnist_test[0][:32], mnist_test[1][:32]
    with torch.no_grad():
        ok = (cnn(x).argmax(1) == y) & (mlp(x).argmax(1) == y)
    x, y = x[ok], y[ok]
    for name in ("di-fgsm", "ti-fgsm"):
        res = advlab.attacks.get(name)(cnn, x, y)
        assert res.success_rate >= 0.8
        with torch.no_grad():
            assert (mlp(res.x_adv).argmax(1) != y).float().mean() >= 0.4


def _paper_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                decay: float = 1.0, diversity: float = 0.0, resize: float = 0.9,
                kernel: int = 0, nesterov: bool = False, scales: int = 1, variance: int = 0,
                beta: float = 1.5, seed: int = 0) -> torch.Tensor:
    """MI-FGSM with DI, TI, NI, SI and VMI written out as the papers give it (advlab's own
    loop before the transfer attacks moved onto the shared loop of gradient.py)."""
    gen = torch.Generator().manual_seed(seed)
    ce = advlab.losses.objective("ce")

    def grad_at(p: torch.Tensor) -> torch.Tensor:
        p = p.detach().requires_grad_(True)
        total = torch.zeros(())
        for i in range(scales):
            seen = diverse(p / 2 ** i, diversity, resize, gen) if diversity else p / 2 ** i
            total = total + ce(model(seen), y, None).sum()
        (g,) = torch.autograd.grad(total / scales, p)
        return smooth(g, gaussian_kernel(kernel)) if kernel > 1 else g

    alpha = eps / steps
    g, v, x_adv = torch.zeros_like(x), torch.zeros_like(x), x
    for _ in range(steps):
        grad = grad_at(x_adv + alpha * decay * g if nesterov else x_adv)
        total = grad + v
        g = decay * g + total / total.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        if variance:
            near = torch.zeros_like(x)
            for _ in range(variance):
                u = torch.rand(x.shape, generator=gen)
                near += grad_at(x_adv + (2 * u - 1) * beta * eps)
            v = near / variance - grad
        x_adv = torch.minimum(torch.maximum(x_adv + alpha * g.sign(), x - eps), x + eps)
        x_adv = x_adv.clamp(0, 1)
    return x_adv


@pytest.mark.parametrize("settings", [
    {"diversity": 0.5}, {"diversity": 0.5, "kernel": 5}, {"nesterov": True},
    {"nesterov": True, "scales": 3}, {"variance": 4}, {"decay": 0.5, "kernel": 3}])
def test_shared_loop_equals_the_papers_loop(tiny, settings: dict) -> None:
    """The transfer members on the shared loop (their enhancements as a gradient source
    that sees the momentum) give the same images, bit for bit, as the loop written out."""
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(6)
    got = TransferAttack(0.1, steps=4, seed=5, **settings)(tiny, x, y).x_adv
    want = _paper_loop(tiny, x, y, 0.1, 4, seed=5, **settings)
    assert torch.equal(got, want)
