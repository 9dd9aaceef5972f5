"""The label-only mechanics (decision.py) through HopSkipJump and Boundary: whatever they
return that moved is a verified adversarial point."""
from __future__ import annotations

import torch

import advlab
import testkit

X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def test_label_attacks_return_verified_points() -> None:
    model = testkit.LabelCounter().eval()
    y = model.labels(X)
    for name in ("hopskipjump", "boundary"):
        res = advlab.attacks.get(name, max_queries=50)(model, X, y)
        with torch.no_grad():
            pred = model(res.x_adv).argmax(1)
        moved = (res.x_adv != X).flatten(1).any(1)
        assert (pred[moved] != y[moved]).all()
