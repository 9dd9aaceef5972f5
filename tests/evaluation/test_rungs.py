"""advlab.evaluation.rungs: the climb's bookkeeping and the rungs, on a model whose answers are
known in closed form.

``MeanSign`` classifies by the sign of mean(x) - 1/2. A Linf perturbation of radius eps moves
the mean by eps at most (all pixels pushed one way), so at eps = 0.1 an image whose mean is
within 0.1 of 1/2 can be fooled and one farther away cannot. The rungs' own end to end tests
(against the masked suite, through :func:`advlab.evaluation.ladder.settle`) are in
test_ladder.py.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from advlab.evaluation.rungs import (
    UNBOUNDED_RATE,
    Climb,
    Options,
    Rung,
    label_rung,
    passed_unbounded,
    run_gradient_rung,
    square_rung,
)

EPS = 0.1
#: image means - 1/2: the first two within EPS of the boundary, the last two beyond it
OFFSETS = (0.02, -0.03, 0.3, -0.25)


class MeanSign(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        s = 10 * (x.flatten(1).mean(1, keepdim=True) - 0.5)
        return torch.cat([s, -s], 1)


def climb(offsets: tuple[float, ...] = OFFSETS) -> Climb:
    """A fresh climb on constant 1 x 4 x 4 images with these offsets, labelled correctly."""
    x = (0.5 + torch.tensor(offsets)).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    y = (x.flatten(1).mean(1) < 0.5).long()
    return Climb(MeanSign().eval(), x, y, EPS, 1, x.clone(),
                 torch.zeros(len(x), dtype=torch.bool))


def test_take_keeps_the_first_win_of_each_example() -> None:
    s = climb()
    x = s.x
    first = torch.stack([x[0] - EPS, x[2] - EPS, x[3] + EPS])  # fools 0 only
    assert s.take(first, torch.tensor([0, 2, 3])) == 1
    assert s.fooled.tolist() == [True, False, False, False] and s.robust.tolist() == [1, 2, 3]
    assert torch.equal(s.x_adv[0], x[0] - EPS) and torch.equal(s.x_adv[1:], x[1:])
    again = torch.stack([x[0] - EPS / 2, x[1] + EPS])       # fools both; 0 was fooled before
    assert s.take(again, torch.tensor([0, 1])) == 1
    assert torch.equal(s.x_adv[0], x[0] - EPS) and torch.equal(s.x_adv[1], x[1] + EPS)
    assert s.robust.tolist() == [2, 3]


def test_passed_unbounded() -> None:
    def rung(unbounded: float | None) -> Rung:
        return Rung("logits", "", 4, 0, 1.0, 0.0, unbounded)

    assert not passed_unbounded([])
    assert not passed_unbounded([rung(None), rung(UNBOUNDED_RATE - 0.01)])
    assert passed_unbounded([rung(0.2), rung(UNBOUNDED_RATE)])


def test_gradient_rung_fools_exactly_the_examples_within_reach() -> None:
    s = climb()
    run_gradient_rung(s, "logits", "APGD", [s.model], Options(steps=10), randomized=False,
                      classes=2, seed=0)
    (r,) = s.rungs
    assert (r.name, r.attacked, r.new, r.robust_accuracy) == ("logits", 4, 2, 0.5)
    assert s.fooled.tolist() == [True, True, False, False] and torch.equal(s.white, s.fooled)
    assert r.unbounded == 1.0                      # eps = 1 reaches across for every image
    assert (s.x_adv - s.x).abs().amax() <= EPS + 1e-6


def test_square_stops_after_a_search_that_finds_nothing_new() -> None:
    s = climb()
    square_rung(s, Options(square_queries=200, p_inits=(0.8, 0.3, 0.05)), seed=0)
    (r,) = s.rungs
    assert (r.attacked, r.new, r.robust_accuracy) == (4, 2, 0.5)
    assert r.detail == "Square, 200 queries; p_init=0.8: 2, p_init=0.3: 0"  # 0.05 not run
    near = climb(OFFSETS[:2])
    square_rung(near, Options(square_queries=200), seed=0)
    assert near.rungs[0].detail == "Square, 200 queries; p_init=0.8: 2"  # none left to attack


def test_label_rung_keeps_only_points_inside_the_ball() -> None:
    s = climb()
    label_rung(s, Options(label_queries=400), seed=0)
    (r,) = s.rungs
    assert (r.name, r.attacked, r.new) == ("label", 4, 2)      # the far two: outside eps
    assert s.fooled.tolist() == [True, True, False, False]
    assert torch.equal(s.x_adv[2:], s.x[2:]) and (s.x_adv - s.x).abs().amax() <= EPS * (1 + 1e-6)
