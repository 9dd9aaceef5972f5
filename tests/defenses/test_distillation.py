"""Defensive distillation: soft labels in closed form, the saturated softmax, model untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlab import defenses
from advlab.defenses.distillation import reinitialise, soft_labels
from advlab.errors import InputError

T = 20.0


@pytest.fixture(scope="module")
def distilled(digits, plain_net):
    x_tr, y_tr = digits[0], digits[1]
    return defenses.distill(plain_net, x_tr, y_tr, temperature=T, epochs=10, lr=1e-2)


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g.flatten(1).abs().sum(1)


def test_distill_returns_teacher_and_student_and_leaves_model(digits, plain_net, guard,
                                                              distilled):
    check = guard(plain_net)
    teacher, student = distilled
    assert distilled[-1] is student and distilled.teacher is teacher
    check()
    for m in (teacher, student):
        assert m is not plain_net and not m.training
        assert all(p.grad is None for p in m.parameters())
    x_te, y_te = digits[2], digits[3]
    with torch.no_grad():
        assert (student(x_te).argmax(1) == y_te).float().mean() > 0.85
        # trained at T, deployed at T = 1: logits about T times larger than a normal net's
        scale = student(x_te).std(1).median() / plain_net(x_te).std(1).median()
    assert scale > 3


def test_softmax_saturates_at_deployment(digits, plain_net, distilled):
    x_te, y_te = digits[2][:200], digits[3][:200]
    student = distilled.student
    with torch.no_grad():
        right = student(x_te).argmax(1) == y_te
    g_student = _input_grad(student, x_te[right], y_te[right]).median()
    g_plain = _input_grad(plain_net, x_te[right], y_te[right]).median()
    assert g_student < g_plain / 100  # the vanishing gradient that stops FGSM on the softmax
    # on the logits divided by T, the gradient is back to a normal size
    scaled = nn.Sequential(student, _Scale(1 / T))
    assert _input_grad(scaled, x_te[right], y_te[right]).median() > g_plain / 10


class _Scale(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.c


def test_soft_labels_closed_form(plain_net, digits):
    x = digits[2][:50]
    p = soft_labels(plain_net, x, 7.0)
    with torch.no_grad():
        z = plain_net(x).double()
    ref = torch.exp(z / 7.0) / torch.exp(z / 7.0).sum(1, keepdim=True)
    torch.testing.assert_close(p.double(), ref, atol=1e-6, rtol=0)


def test_reinitialise(plain_net, guard):
    check = guard(plain_net)
    a, b, c = reinitialise(plain_net, 1), reinitialise(plain_net, 1), reinitialise(plain_net, 2)
    check()
    for (k, va), vb, vc, v0 in zip(a.state_dict().items(), b.state_dict().values(),
                                   c.state_dict().values(), plain_net.state_dict().values()):
        assert torch.equal(va, vb), k
        assert not torch.equal(va, vc) and not torch.equal(va, v0), k
    with pytest.raises(InputError):
        reinitialise(nn.Sequential(nn.Flatten(), nn.Bilinear(2, 2, 2)), 0)


def test_given_teacher_is_not_changed(digits, plain_net, guard):
    x, y = digits[0][:128], digits[1][:128]
    teacher = plain_net
    check = guard(teacher)
    out = defenses.distill(plain_net, x, y, temperature=1.0, epochs=1, teacher=teacher)
    check()
    assert out.teacher is not teacher
    with pytest.raises(InputError):
        defenses.distill(plain_net, x, y, temperature=0.0)
