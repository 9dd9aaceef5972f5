"""attacks/minnorm.py: the C&W family's loss, constant search and best-so-far tracking."""
from __future__ import annotations

import math

import pytest
import torch

from advlab.attacks.minnorm import Best, ConstantSearch, cw_margin, cw_success


def test_cw_margin_on_log_probabilities_is_the_logit_margin() -> None:
    z = torch.tensor([[2.0, -1.0, 0.5], [-3.0, -1.0, -2.0]], dtype=torch.float64)
    y, t = torch.tensor([0, 2]), torch.tensor([1, 1])
    for target in (None, t):
        torch.testing.assert_close(cw_margin(z, y, target, 5.0, log_probs=True),
                                   cw_margin(z, y, target, 5.0))
    assert cw_margin(z, y, None, 5.0).tolist() == [1.5, -1.0]   # Z_y - max other
    assert cw_margin(z, y, None, 0.5).tolist() == [1.5, -0.5]   # floored at -kappa
    assert cw_margin(z, y, t, 5.0).tolist() == [3.0, -1.0]      # max other than t - Z_t


def test_constant_search_cw_schedule() -> None:
    """C&W: x10 until the first success, then bisection between the bounds."""
    s = ConstantSearch.start(1.0, 1, torch.zeros(1))
    for found, want in [(False, 10.0), (False, 100.0), (True, 55.0), (False, 77.5)]:
        assert s.update(torch.tensor([found])).item() == pytest.approx(want)


def test_constant_search_lbfgs_schedule() -> None:
    """L-BFGS: the largest successful c; x10 on success, /10 on failure, then geometric."""
    s = ConstantSearch.start(1.0, 1, torch.zeros(1), up_on_success=True, geometric=True)
    for found, want in [(True, 10.0), (False, math.sqrt(10)), (True, math.sqrt(10 ** 1.5))]:
        assert s.update(torch.tensor([found])).item() == pytest.approx(want)


def test_best_keeps_the_closest_adversarial_candidate_per_example() -> None:
    x = torch.zeros(2, 1, 1, 1)
    best = Best.start(x)
    cand = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)
    better = best.update(torch.tensor([0, 0, 0, 1]), cand, torch.tensor([3.0, 2.0, 1.0, 5.0]),
                         torch.tensor([True, True, False, False]))
    assert better.tolist() == [True, False] and best.found.tolist() == [True, False]
    assert best.norm[0] == 2.0 and best.x[0].item() == 2.0 and best.x[1].item() == 0.0
    best.update(torch.tensor([0]), cand[:1], torch.tensor([2.5]), torch.tensor([True]))
    assert best.x[0].item() == 2.0  # farther: not kept


def test_margin_is_right_for_negative_logits() -> None:
    z = torch.tensor([[-1.0, -2.0, -3.0]])
    assert cw_margin(z, torch.tensor([0]), None, 0.0).item() == 1.0  # Z_y - max other = -1 + 2
    assert cw_margin(z, torch.tensor([0]), torch.tensor([1]), 0.0).item() == 1.0  # -1 - (-2)
    assert cw_margin(z, torch.tensor([0]), torch.tensor([2]), 0.0).item() == 2.0  # -1 - (-3)
    assert cw_margin(z, torch.tensor([2]), None, 0.5).item() == -0.5  # clamped at -kappa
    assert cw_margin(z, torch.tensor([1]), torch.tensor([0]), 0.5).item() == -0.5
    # the lecture's example: logits (0.4, 0.8, -0.2, 7.4), target 1 -> 6.6, later -> 0 at kappa 0
    lec = torch.tensor([[0.4, 0.8, -0.2, 7.4], [-0.1, 5.4, -0.9, 5.3]])
    got = cw_margin(lec, torch.tensor([3, 3]), torch.tensor([1, 1]), 0.0)
    torch.testing.assert_close(got, torch.tensor([6.6, 0.0]))


def test_success_needs_the_confidence_margin() -> None:
    z = torch.tensor([[1.0, 1.5, 0.0], [0.0, 3.0, 0.0]])
    y = torch.tensor([0, 0])
    assert cw_success(z, y, None, 0.0).tolist() == [True, True]
    assert cw_success(z, y, None, 1.0).tolist() == [False, True]
