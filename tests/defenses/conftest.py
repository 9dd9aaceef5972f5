"""Fixtures for the defense tests: scikit-learn's 8 x 8 digits and a tiny seeded network.

The network has a dropout layer on purpose: attacks refuse train-mode models, so a training
loop that forgot to switch its copy to eval mode before crafting would fail loudly.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import advlab
from advlab.defenses.training import FitSettings, fit


def make_net(seed: int = 0) -> nn.Module:
    """64-32-10 ReLU network with dropout, initialised from ``seed``, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1),
                        nn.Linear(32, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / p.shape[-1] ** 0.5))
    return net.eval()


def _ce(m: nn.Module, xb: Tensor, yb: Tensor, e: float, g: torch.Generator) -> Tensor:
    return nn.functional.cross_entropy(m(xb), yb)


@pytest.fixture(scope="package")
def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x_tr, y_tr = advlab.data.load("digits", "train")
    x_te, y_te = advlab.data.load("digits", "test")
    return x_tr, y_tr, x_te, y_te


@pytest.fixture(scope="package")
def plain_net(digits: tuple[Tensor, ...]) -> nn.Module:
    """The tiny network trained normally (about 95% test accuracy)."""
    x_tr, y_tr = digits[0], digits[1]
    return fit(make_net(), x_tr, y_tr, _ce, 0.0, FitSettings(epochs=15, lr=3e-3), "plain")


@pytest.fixture(scope="session")
def net_factory():  # noqa: ANN201
    """make_net(seed) -> a fresh tiny network in eval mode."""
    return make_net


@pytest.fixture
def guard():  # noqa: ANN201
    """guard(model) snapshots the model and returns check(), which asserts it is unchanged."""
    def take(model: nn.Module):  # noqa: ANN202
        before = snapshot(model)
        return lambda: assert_unchanged(model, before)
    return take


def snapshot(model: nn.Module) -> dict:
    """Everything a defense must leave unchanged: parameters, buffers, modes, grads."""
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "modes": [m.training for m in model.modules()],
            "grads": [p.grad for p in model.parameters()],
            "requires_grad": [p.requires_grad for p in model.parameters()]}


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert all(g is None for g in after["grads"])
    assert after["requires_grad"] == before["requires_grad"]
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


