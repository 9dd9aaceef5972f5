"""The robustness curve from one minimum-norm run: exact radii on a linear model, the bounded
grid lowering it where the run overshoots, never above either attack."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from advlab.errors import InputError
from advlab.evaluation.curve import accuracy_at, robustness_curve, smallest_eps


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = nn.Parameter(torch.randn(3, 16, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear 3-class model, images near 0.5 (the box never binds) labelled with the
    model's prediction, and the exact Linf radius min_k (z_y - z_k) / ||w_y - w_k||_1."""
    model = Linear().eval()
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.02 * torch.rand(12, 1, 4, 4, generator=g)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = model.w.detach()
    gap = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).abs().sum(2)
    exact = gap.scatter(1, y[:, None], float("inf")).amin(1)
    assert (exact < 0.4).all()  # x +- exact stays inside [0, 1]
    return model, x, y, exact.double()


def test_smallest_eps_cases() -> None:
    s = smallest_eps(torch.tensor([0.3, 0.2, 0.5]), torch.tensor([True, False, True]),
                     torch.tensor([True, True, False]))
    assert s.tolist() == [pytest.approx(0.3), float("inf"), 0.0]
    assert accuracy_at(s, [0.0, 0.29, 0.3, 1.0]).tolist() == pytest.approx(
        [2 / 3, 2 / 3, 1 / 3, 1 / 3])


def test_one_run_gives_the_exact_radii_of_a_linear_model() -> None:
    model, x, y, exact = _setup()
    curve = robustness_curve(model, x, y, [0.0], bounded=None)
    ratio = curve.minnorm_smallest / exact
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.06).all()  # FAB's overshoot eta=1.05
    grid = exact.sort().values[[2, 7]].tolist()
    assert curve.at(grid).tolist() == pytest.approx(
        accuracy_at(curve.minnorm_smallest, grid).tolist())


def test_the_bounded_grid_lowers_the_curve_where_the_run_overshoots() -> None:
    model, x, y, exact = _setup()
    # one FAB step lands at 1.05 x the exact radius: at 1.02 x the run says robust, the
    # bounded attack (a single exact step on a linear model) fools the example
    grid = sorted((exact[[0, 5]] * 1.02).tolist())
    curve = robustness_curve(model, x, y, grid, minnorm_kwargs={"steps": 1},
                             bounded="apgd-ce", bounded_kwargs={"steps": 10})
    want = np.array([float((exact > e * (1 + 1e-6)).double().mean()) for e in grid])
    assert np.allclose(curve.accuracy, want)
    assert (curve.accuracy <= curve.minnorm_accuracy).all()
    assert (curve.accuracy < curve.minnorm_accuracy).any()
    assert (np.diff(curve.accuracy) <= 0).all()
    assert (curve.smallest <= curve.minnorm_smallest).all()


def test_bad_grids_and_attacks() -> None:
    model, x, y, _ = _setup()
    with pytest.raises(InputError):
        robustness_curve(model, x, y, [-0.1])
    with pytest.raises(InputError):
        robustness_curve(model, x, y, [])
    with pytest.raises(InputError, match="unbounded"):
        robustness_curve(model, x, y, [0.1], minnorm="pgd")


def test_never_above_the_bounded_attack_alone_nor_the_run() -> None:
    # a seeded (untrained) MLP: the bounded attack at each grid eps confirms on every image,
    # as it would run alone, so the curve is at most both at every grid point
    import advlab

    model = advlab.zoo.build("digits-mlp", seed=0).eval()
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    grid = [0.02, 0.05, 0.1, 0.2]
    curve = robustness_curve(model, x, y, grid, minnorm_kwargs={"steps": 3},
                             bounded_kwargs={"steps": 5})
    alone = np.array([float((~advlab.attacks.get("apgd-ce", eps=e, steps=5)(
        model, x, y).success).double().mean()) for e in grid])
    assert (curve.accuracy <= alone).all() and (curve.accuracy <= curve.minnorm_accuracy).all()
    assert ((curve.accuracy > 0) & (curve.accuracy < 1)).any()  # not a trivial 0 or 1 grid
    assert (curve.accuracy < curve.minnorm_accuracy).any() or (curve.accuracy < alone).any()
