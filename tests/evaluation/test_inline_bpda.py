"""Automatic BPDA inline in forward (advlab.evaluation.inline_bpda): the forward is unchanged
bit for bit, and the backward is the closed-form identity straight-through of each step."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.evaluation import bpda
from advlab.evaluation.inline_bpda import InlineStraightThrough, replaced_calls


class Inline(nn.Module):
    """A linear map w after an inline step (no submodule for the step)."""

    def __init__(self, step: str) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 3, generator=torch.Generator().manual_seed(1),
                                          dtype=torch.float64))
        self.step = step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.flatten(1)
        if self.step == "floor":
            h = torch.floor(u * 4) / 4
        elif self.step == "round-method":
            h = (u * 4).round() / 4
        elif self.step == "sign":
            h = torch.sign(u - 0.5)
        elif self.step == "compare":
            h = (u > 0.5).double()
        elif self.step == "compare-times":
            h = ((u >= 0.5) * 2.0).double()
        else:
            raise AssertionError(self.step)
        return h @ self.w


def _x() -> torch.Tensor:
    return torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)


@pytest.mark.parametrize("step, scale, call", [("floor", 1.0, "floor"),
                                               ("round-method", 1.0, "round"),
                                               ("sign", 1.0, "sign"),
                                               ("compare", 1.0, "double of a step"),
                                               ("compare-times", 2.0, "mul of a step")])
def test_forward_unchanged_backward_is_the_identity_of_the_step(step, scale, call) -> None:  # noqa: ANN001
    model = Inline(step).eval()
    x = _x()
    wrapped = InlineStraightThrough(model)
    with torch.no_grad():
        assert torch.equal(wrapped(x), model(x))                 # bit for bit
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(wrapped(xg)[:, 1].sum(), xg)
    want = scale * model.w[:, 1].detach().expand(6, 16).reshape(x.shape)
    assert torch.allclose(g, want, atol=1e-12)                 # d(w . u)/du, closed form
    assert call in wrapped.replaced


def test_argmax_one_hot_backward_is_the_logits_own() -> None:
    lin = nn.Linear(16, 4, dtype=torch.float64)

    class Hard(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.lin(x.flatten(1))
            return 3.0 * nn.functional.one_hot(z.argmax(1), 4).double()

    x = _x()
    wrapped = InlineStraightThrough(Hard().eval())
    xg = x.clone().requires_grad_(True)
    out = wrapped(xg)
    assert torch.equal(out.detach(), Hard()(x))
    (g,) = torch.autograd.grad(out[:, 2].sum(), xg)
    want = 3.0 * lin.weight[2].detach().expand(6, 16).reshape(x.shape)
    assert torch.allclose(g, want, atol=1e-12)


def test_honest_code_untouched_and_surrogate_only_where_needed() -> None:
    honest = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, dtype=torch.float64)).eval()
    x = _x()
    assert replaced_calls(honest, x) == []
    net, layers = bpda.surrogate(honest, x)
    assert net is honest and layers == []
    masked = Inline("floor").eval()
    net, layers = bpda.surrogate(masked, x)
    assert [s.name for s in layers] == [bpda.FORWARD] and "floor" in layers[0].replacement
    with torch.no_grad():
        assert torch.equal(net(x), masked(x))
