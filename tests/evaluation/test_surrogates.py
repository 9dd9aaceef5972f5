"""advlab.evaluation.surrogates: has_gradient and the Attached wrapper."""
from __future__ import annotations

import torch
from torch import nn

from advlab.evaluation.surrogates import Attached, has_gradient
from testkit import Floor, box_images


def test_has_gradient_needs_a_graph_to_the_input() -> None:
    head = nn.Linear(16, 3, dtype=torch.float64)  # its parameters alone make a graph
    assert not has_gradient(lambda x: head((x > 0.5).to(x.dtype).flatten(1)), box_images())
    assert has_gradient(lambda x: head(x.flatten(1)), box_images())
    attached = Attached(nn.Sequential(Floor(), nn.Flatten(), head)).eval()
    xg = box_images().requires_grad_(True)
    (g,) = torch.autograd.grad(attached(xg).sum(), xg)      # attacks can run: it is zero
    assert not g.any() and torch.equal(attached(box_images()), attached.model(box_images()))
