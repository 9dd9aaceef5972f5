"""LID (detectors/lid.py): the MLE in closed form and the features recomputed by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import testkit
from advlab.attacks import FGSM
from advlab.detectors import LID
from advlab.detectors.lid import lid_mle


def test_lid_closed_form() -> None:
    d = torch.tensor([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]])
    m = np.mean(np.log([0.25, 0.5, 1.0]))
    assert lid_mle(d)[0].item() == pytest.approx(-1 / m)
    assert lid_mle(d)[1].item() > 1e10  # all at the same distance: unbounded estimate
    # points uniform in a d-dimensional ball have LID d: radii r = u^(1/d), sorted
    g = torch.Generator().manual_seed(0)
    r = torch.rand(2000, 100, generator=g).pow(1 / 5).sort(1).values
    assert lid_mle(r).mean().item() == pytest.approx(5.0, rel=0.05)


def test_lid_features_by_hand(by_hand) -> None:
    model, x, y, xt = by_hand
    det = LID(["conv", "fc"], k=4, reference=30, attacks=[FGSM(eps=0.3)], n_adv=30, epochs=10,
              seed=3).fit(model, x, y)
    ref = torch.randperm(100, generator=torch.Generator().manual_seed(3))[:30]
    a, at = testkit.activations(model, x[ref]), testkit.activations(model, xt)
    cols = []
    for name in ("conv", "fc"):
        d = torch.cdist(at[name].flatten(1), a[name].flatten(1)).sort(1).values[:, :4].numpy()
        cols.append(-1 / np.mean(np.log(d / d[:, -1:]), 1))
    np.testing.assert_allclose(det.features(xt).numpy(), np.stack(cols, 1), rtol=1e-3)
    xg = xt.clone().requires_grad_(True)
    torch.testing.assert_close(det.score_torch(xg).detach(), det.score(xt))
