"""Losses against hand-computed values, including the negative-logit margin."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from advlab import losses
from advlab.errors import LabelError, UnknownNameError


def test_margin_negative_logits() -> None:
    z = torch.tensor([[-1.0, -2.0, -3.0]])
    assert losses.margin(z, torch.tensor([0])).item() == pytest.approx(1.0)
    assert losses.margin(z, torch.tensor([2])).item() == pytest.approx(-2.0)
    assert losses.margin(z, torch.tensor([2]), kappa=0.5).item() == pytest.approx(-0.5)


def test_ce_matches_torch() -> None:
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(losses.ce(z, y), F.cross_entropy(z, y, reduction="none"))


def test_dlr_by_hand() -> None:
    z = torch.tensor([[4.0, 1.0, 0.0, -2.0]])
    # untargeted, y = 1: -(z_y - max_other) / (z_pi1 - z_pi3) = -(1 - 4) / (4 - 0)
    assert losses.dlr(z, torch.tensor([1])).item() == pytest.approx(0.75)
    # targeted y = 0, t = 2: -(4 - 0) / (4 - (0 + -2) / 2)
    assert losses.dlr_targeted(z, torch.tensor([0]), torch.tensor([2])).item() == \
        pytest.approx(-4 / 5)
    assert losses.dlr(z * 7 + 3, torch.tensor([1])).item() == pytest.approx(0.75)  # invariance


def test_dlr_needs_classes() -> None:
    with pytest.raises(LabelError, match="at least 3 classes"):
        losses.dlr(torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(LabelError, match="at least 4 classes"):
        losses.dlr_targeted(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([1, 2]))


def test_objectives_ascend_towards_the_goal() -> None:
    z = torch.tensor([[2.0, 0.0, -1.0]])
    y, t = torch.tensor([0]), torch.tensor([2])
    ce = losses.objective("ce")
    assert ce(z, y, None).item() == pytest.approx(-math.log(F.softmax(z, 1)[0, 0].item()))
    assert ce(z, y, t).item() == pytest.approx(math.log(F.softmax(z, 1)[0, 2].item()))
    assert losses.objective("margin")(z, y, None).item() == pytest.approx(-2.0)
    assert losses.objective("margin")(z, y, t).item() == pytest.approx(-3.0)
    with pytest.raises(UnknownNameError, match="available: ce, dlr, margin"):
        losses.objective("hinge")
