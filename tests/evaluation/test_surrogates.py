"""advlab.evaluation.surrogates: has_gradient, flat and the Attached wrapper."""
from __future__ import annotations

import torch
from torch import nn

from advlab.evaluation.surrogates import Attached, flat, has_gradient
from testkit import Floor, box_images


def test_has_gradient_needs_a_graph_to_the_input() -> None:
    head = nn.Linear(16, 3, dtype=torch.float64)  # its parameters alone make a graph
    assert not has_gradient(lambda x: head((x > 0.5).to(x.dtype).flatten(1)), box_images())
    assert has_gradient(lambda x: head(x.flatten(1)), box_images())
    attached = Attached(nn.Sequential(Floor(), nn.Flatten(), head)).eval()
    xg = box_images().requires_grad_(True)
    (g,) = torch.autograd.grad(attached(xg).sum(), xg)      # attacks can run: it is zero
    assert not g.any() and torch.equal(attached(box_images()), attached.model(box_images()))


def test_flat_is_a_zero_jacobian_per_example() -> None:
    g = torch.Generator().manual_seed(0)
    x = box_images(8)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, dtype=torch.float64))
    assert not flat(linear, x, g).any()
    assert flat(nn.Sequential(Floor(), linear), x, g).all()
    # a ReLU layer flat exactly where its pre-activation is negative for every unit:
    # the examples with x[0, 0, 0] < 0.5 (one unit, 0.5 - x) are dead, the others live
    relu = nn.Linear(16, 1, dtype=torch.float64)
    with torch.no_grad():
        relu.weight.zero_()
        relu.weight[0, 0], relu.bias[0] = 1.0, -0.5
    net = nn.Sequential(nn.Flatten(), relu, nn.ReLU(), nn.Linear(1, 3, dtype=torch.float64))
    expected = x[:, 0, 0, 0] < 0.5
    assert torch.equal(flat(net, x, g), expected) and 0 < expected.sum() < len(x)
    assert flat(lambda z: linear(z).detach(), x, g).all()    # no graph at all
