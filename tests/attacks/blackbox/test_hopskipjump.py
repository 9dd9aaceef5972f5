"""HopSkipJump on a linear model: closer with more queries, never closer than the nearest
class hyperplane, and targeted runs from given starting points."""
from __future__ import annotations

import torch

import advlab
import testkit

X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def test_hopskipjump_improves_with_queries() -> None:
    model = testkit.LabelCounter().eval()
    y = model.labels(X)
    few = advlab.attacks.get("hopskipjump", max_queries=200)(model, X, y)
    many = advlab.attacks.get("hopskipjump", max_queries=2000)(model, X, y)
    assert few.success.all() and many.success.all()
    assert many.norms["l2"].median() < 0.9 * few.norms["l2"].median()
    # on a linear model no adversarial point is closer than the nearest class hyperplane
    w = model.w.detach()
    with torch.no_grad():
        z = X.flatten(1) @ w.T
    zy = z.gather(1, y[:, None])
    dw = (w[y][:, None, :] - w[None]).norm(dim=2)
    dist = ((zy - z) / dw.clamp_min(1e-12)).masked_fill(dw < 1e-9, float("inf")).amin(1)
    assert (many.norms["l2"] >= dist - 1e-4).all()
    assert (many.norms["l2"] <= 1.6 * dist).all()  # and HSJ gets close (box constraints aside)


def test_starting_points_for_targeted() -> None:
    model = testkit.LabelCounter().eval()
    y = model.labels(X)
    target = torch.where(y.roll(1) != y, y.roll(1), (y + 1) % 10)
    start = X.roll(1, 0)  # where the target is another image's label, that image is a start
    res = advlab.attacks.get("hopskipjump", max_queries=300, init_tries=1)(
        model, X, y, target, starting_points=start)
    assert res.success[y.roll(1) != y].all()
