"""Carlini-Wagner: the box change of variables, the exact minimal perturbation of a linear
model, then strength on the zoo (its margin loss is tested with attacks/minnorm.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import advlab
from advlab.attacks import CarliniWagnerL2, CarliniWagnerLinf, DeepFool
from advlab.attacks.cw import Box
from advlab.attacks.minnorm import cw_margin
from testkit import Linear, linear_setup


@pytest.mark.parametrize("kind", ["tanh", "clip"])
def test_box_starts_exactly_at_x(kind: str) -> None:
    x = torch.tensor([0.0, 1.0, 0.3, 0.999, 1e-7]).view(1, 1, 1, 5)
    box = Box(kind, x, 1e-6)
    idx = torch.arange(1)
    assert torch.equal(box.image(box.start(), idx), x)
    big = box.image(box.start() + 50.0, idx)
    assert big.min() >= 0 and big.max() <= 1 and (big >= 1 - 1e-5).all()


def test_tanh_freezes_pixels_at_the_bounds() -> None:
    """d x'/dw at a pixel exactly 0 is ~2 tanh_eps: the cost of the paper's variables."""
    x = torch.tensor([0.0, 0.5]).view(1, 1, 1, 2)
    box = Box("tanh", x, 1e-6)
    w = box.start().requires_grad_(True)
    (g,) = torch.autograd.grad(box.image(w, torch.arange(1)).sum(), w)
    assert g[0, 0, 0, 0] < 1e-5 and g[0, 0, 0, 1] == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("box", ["clip", "tanh"])
def test_l2_linear_reaches_the_minimal_distance(box: str) -> None:
    """For a linear binary model the smallest L2 perturbation is |f(x)| / ||w||; C&W's binary
    search must end just beyond it."""
    model, x, y, f, w = linear_setup()
    res = CarliniWagnerL2(box=box, steps=200, lr=0.01, c0=0.1)(model, x, y)
    assert res.success.all()
    dmin = f / w.norm()
    assert (res.norms["l2"] >= dmin * (1 - 1e-6)).all()
    assert (res.norms["l2"] <= dmin * 1.03).all(), res.norms["l2"] / dmin


def test_linf_linear_reaches_the_minimal_distance() -> None:
    """Minimal Linf perturbation of a linear binary model: |f(x)| / ||w||_1. The tau
    reduction stops within its 0.9 factor."""
    model, x, y, f, w = linear_setup(seed=2)
    res = CarliniWagnerLinf(c0=0.1)(model, x, y)
    assert res.success.all()
    dmin = f / w.abs().sum()
    assert (res.norms["linf"] >= dmin * (1 - 1e-6)).all()
    assert (res.norms["linf"] <= dmin / 0.9 * 1.02).all(), res.norms["linf"] / dmin


def test_targeted_linear_multiclass() -> None:
    model = Linear(16, 5, seed=3, bias_scale=0.1).eval()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64) * 0.2 + 0.4
    with torch.no_grad():
        y = model(x).argmax(1)
    t = (y + 2) % 5
    res = CarliniWagnerL2(c0=1.0)(model, x, y, target=t)
    with torch.no_grad():
        assert torch.equal(model(res.x_adv).argmax(1)[res.success], t[res.success])
    assert res.success.all()


def test_confidence_is_reached() -> None:
    model, x, y, _, _ = linear_setup(seed=5)
    res = CarliniWagnerL2(confidence=2.0, c0=1.0)(model, x, y)
    with torch.no_grad():
        assert (cw_margin(model(res.x_adv), y, None, 2.0) <= -2.0 + 1e-9).all()


def test_bad_settings() -> None:
    for kw in ({"confidence": -1.0}, {"box": "sigmoid"}, {"steps": 0}, {"c0": 0.0}):
        with pytest.raises(advlab.errors.ThreatModelError):
            CarliniWagnerL2(**kw)


def correct(model: nn.Module, data: tuple, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data
    with torch.no_grad():
        ok = model(x[:3 * n]).argmax(1) == y[:3 * n]
    return x[:3 * n][ok][:n], y[:3 * n][ok][:n]


def test_l2_mlp_strength(mlp, mnist_test) -> None:
    """100% success; smaller than DeepFool's L2 (which overshoots), far below FGSM's."""
    x, y = correct(mlp, mnist_test, 12)
    res = CarliniWagnerL2()(mlp, x, y)
    assert res.success.all()
    df = DeepFool()(mlp, x, y)
    assert res.norms["l2"].median() < df.norms["l2"].median()
    assert res.norms["l2"].max() < 3.0


def test_l2_targeted_mlp(mlp, mnist_test) -> None:
    x, y = correct(mlp, mnist_test, 8)
    t = (y + 5) % 10
    res = CarliniWagnerL2()(mlp, x, y, target=t)
    assert res.success.all()
    with torch.no_grad():
        assert torch.equal(mlp(res.x_adv).argmax(1), t)


def test_linf_mlp_strength(mlp, mnist_test) -> None:
    x, y = correct(mlp, mnist_test, 8)
    res = CarliniWagnerLinf()(mlp, x, y)
    assert res.success.all()
    df = DeepFool(norm="linf")(mlp, x, y)
    assert res.norms["linf"].median() <= df.norms["linf"].median() * 1.05
