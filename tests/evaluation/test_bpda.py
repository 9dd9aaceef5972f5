"""advlab.evaluation.bpda: automatic BPDA; exact answers on tiny models (the BPDA gradient of a
linear model behind a rounding is the linear model's own)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advlab.evaluation import bpda
from testkit import Floor, box_images


class RoundInline(nn.Module):
    """w . round(4 x) / 4 written inline (the preprocessing is not a submodule)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((torch.round(x * 4) / 4).flatten(1))


@pytest.mark.parametrize("make, where", [
    (lambda: RoundInline(), bpda.ROOT_INPUT),
    (lambda: nn.Sequential(Floor(), nn.Flatten(), nn.Linear(16, 3, dtype=torch.float64)), "0"),
])
def test_bpda_gradient_is_the_linear_models_own(make, where) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = make().eval()
    before = copy.deepcopy(model.state_dict())
    x = box_images()
    layers = bpda.probe(model, x)
    assert [(s.name, s.replacement) for s in layers] == [(where, "identity")]
    net = bpda.straight_through(model, layers)
    assert torch.equal(net(x), model(x))                      # forward unchanged, bit for bit
    xg = x.clone().requires_grad_(True)
    r = torch.randn(len(x), 3, dtype=torch.float64)
    (g,) = torch.autograd.grad((net(xg) * r).sum(), xg)
    w = next(m for m in model.modules() if isinstance(m, nn.Linear)).weight
    assert torch.allclose(g.flatten(1), r @ w)                # d/dx of w . x, exactly
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_bpda_leaves_honest_layers_alone() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8, dtype=torch.float64), nn.ReLU(),
                          nn.Linear(8, 3, dtype=torch.float64)).eval()
    assert bpda.probe(model, box_images()) == []


def test_bpda_fits_an_affine_map_for_a_shape_changing_head() -> None:
    class Vote(nn.Module):  # one-hot of the argmax of a linear map: N x 16 -> N x 3
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 3, dtype=torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.fc(x.flatten(1))
            return nn.functional.one_hot(z.argmax(1), 3).to(x.dtype)

    torch.manual_seed(0)
    model = Vote().eval()
    x = box_images(200)
    layers = bpda.probe(model, x)
    assert [(s.name, s.why, s.replacement) for s in layers] == [
        (bpda.ROOT_OUTPUT, "detached", "affine")]
    a = layers[0].weight                                      # votes ~ z A + b
    assert bool((a.argmax(0) == torch.arange(3)).all())       # z_k raises the vote for k
    net = bpda.straight_through(model, layers)
    assert torch.equal(net(x), model(x))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xg)[:, 0].sum(), xg)
    want = (a[:, 0] @ model.fc.weight).expand(len(x), -1)     # the chain rule, exactly
    assert torch.allclose(g.flatten(1), want)
