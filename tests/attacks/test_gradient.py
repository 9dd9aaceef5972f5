"""The gradient family: exact answers on models with closed-form gradients, then strength."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advlab
from advlab.attacks import BIM, FGSM, MIFGSM, PGD
from testkit import Linear


class MeanPool(nn.Module):
    """Parameter-free: logits (m, -m) with m the mean pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)
        return torch.stack([m, -m], 1)


def data(n: int = 8, shape: tuple = (1, 4, 4), seed: int = 0, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g, dtype=torch.float64) * 0.6 + 0.2
    return x, torch.randint(0, k, (n,), generator=g)


def ce_input_grad(model: Linear, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Closed form: d CE / dx = W^T (softmax(z) - e_y)."""
    p = F.softmax(model(x), 1) - F.one_hot(labels, model.w.shape[0]).to(x.dtype)
    return (p @ model.w).view_as(x)


def test_fgsm_linear_closed_form() -> None:
    model = Linear(16, 5).eval()
    x, y = data()
    res = FGSM(eps=0.1)(model, x, y)
    want = (x + 0.1 * ce_input_grad(model, x, y).detach().sign()).clamp(0, 1)
    torch.testing.assert_close(res.x_adv, want)


def test_fgsm_targeted_linear_closed_form() -> None:
    model = Linear(16, 5).eval()
    x, y = data()
    t = (y + 1) % 5
    res = FGSM(eps=0.1)(model, x, y, target=t)
    want = (x - 0.1 * ce_input_grad(model, x, t).detach().sign()).clamp(0, 1)
    torch.testing.assert_close(res.x_adv, want)
    assert torch.equal(res.target, t)


def test_fgsm_meanpool_moves_every_pixel_down() -> None:
    x, _ = data(shape=(1, 3, 3))
    y = torch.zeros(len(x), dtype=torch.int64)
    res = FGSM(eps=0.05)(MeanPool().eval(), x, y)
    torch.testing.assert_close(res.x_adv, x - 0.05)


def test_pgd_l2_single_step_closed_form() -> None:
    model = Linear(16, 5).eval()
    x, y = data()
    res = PGD(eps=10.0, norm="l2", steps=1, alpha=0.2, random_start=False,
              early_stop=False)(model, x, y)
    g = ce_input_grad(model, x, y).detach()
    want = (x + 0.2 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    torch.testing.assert_close(res.x_adv, want)


def test_bim_stays_in_ball_and_follows_sign_steps() -> None:
    model = Linear(16, 5).eval()
    x, y = data()
    res = BIM(eps=0.03, steps=5, alpha=0.01, early_stop=False)(model, x, y)
    assert res.norms["linf"].max() <= 0.03 + 1e-12
    # on a linear model the sign of the gradient changes slowly: most pixels hit the boundary
    assert (res.norms["linf"] > 0.029).all()


def test_mifgsm_first_step_equals_fgsm_step() -> None:
    model = Linear(16, 5).eval()
    x, y = data()
    one = MIFGSM(eps=0.1, steps=1, early_stop=False)(model, x, y)
    torch.testing.assert_close(one.x_adv, FGSM(eps=0.1)(model, x, y).x_adv)


def test_mifgsm_momentum_accumulates() -> None:
    """Two steps by hand: g1 = grad1/|grad1|_1, g2 = g1 + grad2/|grad2|_1."""
    model = Linear(16, 5).eval()
    x, y = data()
    eps, alpha = 0.2, 0.1
    grad1 = ce_input_grad(model, x, y).detach()
    g1 = grad1 / grad1.flatten(1).abs().sum(1).view(-1, 1, 1, 1)
    x1 = (x + alpha * g1.sign()).clamp(0, 1)
    grad2 = ce_input_grad(model, x1, y).detach()
    g2 = g1 + grad2 / grad2.flatten(1).abs().sum(1).view(-1, 1, 1, 1)
    x2 = (x + (x1 + alpha * g2.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    res = MIFGSM(eps=eps, steps=2, early_stop=False)(model, x, y)
    torch.testing.assert_close(res.x_adv, x2)


def test_restarts_only_improve(tiny_factory) -> None:
    model = tiny_factory()
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1).detach()
    one = PGD(eps=0.05, steps=5, restarts=1)(model, x, y)
    many = PGD(eps=0.05, steps=5, restarts=4)(model, x, y)
    assert (many.success | ~one.success).all()
    assert many.success.sum() >= one.success.sum()


def test_early_stop_keeps_every_success(tiny_factory) -> None:
    model = tiny_factory()
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    y = model(x).argmax(1).detach()
    full = PGD(eps=0.05, steps=10, early_stop=False)(model, x, y)
    early = PGD(eps=0.05, steps=10, early_stop=True)(model, x, y)
    assert (early.success | ~full.success).all()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pgd_norms_and_seed(norm: str, tiny_factory) -> None:
    model = tiny_factory()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    y = torch.arange(8)
    a = PGD(norm=norm, seed=1)(model, x, y)
    b = PGD(norm=norm, seed=2)(model, x, y)
    assert not torch.equal(a.x_adv, b.x_adv)
    assert (a.norms[norm] <= PGD(norm=norm).eps * (1 + 1e-5)).all()


# ---------------------------------------------------------------- strength on the zoo models


def robust_accuracy(model: nn.Module, attack: advlab.attacks.Attack, x: torch.Tensor,
                    y: torch.Tensor) -> float:
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    res = attack(model, x, y)
    return (correct & ~res.success).float().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_pgd_eps03_leaves_nothing(which: str, request, mnist_test) -> None:
    model = request.getfixturevalue(which)
    x, y = mnist_test[0][:200], mnist_test[1][:200]
    assert robust_accuracy(model, PGD(eps=0.3, steps=40, alpha=0.01), x, y) == 0.0


@pytest.mark.slow
def test_fgsm_on_cnn_and_monotone_pgd(cnn, mnist_test) -> None:
    x, y = mnist_test[0][:200], mnist_test[1][:200]
    assert robust_accuracy(cnn, FGSM(eps=0.3), x, y) <= 0.10
    accs = [robust_accuracy(cnn, PGD(eps=e, steps=20), x, y) for e in (0.0, 0.05, 0.1, 0.2)]
    assert accs[0] > 0.9
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
