"""Feature distances (detectors/distances.py): the features recomputed by hand."""
from __future__ import annotations

import torch

import testkit
from advlab.attacks import FGSM
from advlab.detectors import FeatureDistance


def test_feature_distance_space_by_hand(by_hand) -> None:
    model, x, y, xt = by_hand
    det = FeatureDistance(["conv", "fc"], hidden=0, attacks=[FGSM(eps=0.3)], n_adv=40,
                          epochs=10).fit(model, x, y)
    a, at = testkit.activations(model, x), testkit.activations(model, xt)
    order = at["fc"].argsort(1, descending=True)
    cols = []
    for name in ("conv", "fc"):
        f, ft = a[name].flatten(1), at[name].flatten(1)
        cent = torch.stack([f[y == c].mean(0) if (y == c).any() else torch.zeros(f.shape[1])
                            for c in range(10)])
        d = torch.cdist(ft, cent)
        cols.append(d.gather(1, order))
    expected = torch.cat(cols, 1)
    torch.testing.assert_close(det.features(xt), expected, rtol=1e-4, atol=1e-4)
    xg = xt.clone().requires_grad_(True)
    torch.testing.assert_close(det.score_torch(xg).detach(), det.score(xt))
