"""Mahalanobis (detectors/mahalanobis.py): the confidences recomputed with numpy."""
from __future__ import annotations

import numpy as np
import torch

import testkit
from advlab.attacks import FGSM
from advlab.detectors import Mahalanobis


def test_mahalanobis_by_hand(by_hand) -> None:
    model, x, y, xt = by_hand
    det = Mahalanobis(["conv", "fc"], attacks=[FGSM(eps=0.3)], n_adv=30,
                      epochs=10).fit(model, x, y)
    a, at = testkit.activations(model, x), testkit.activations(model, xt)
    cols = []
    for name, pool in (("conv", True), ("fc", False)):
        f = (a[name].mean((2, 3)) if pool else a[name]).double().numpy()
        ft = (at[name].mean((2, 3)) if pool else at[name]).double().numpy()
        yn = y.numpy()
        mu = np.stack([f[yn == c].mean(0) if (yn == c).any() else np.zeros(f.shape[1])
                       for c in range(10)])
        cov = np.cov((f - mu[yn]).T, bias=True)
        cov += 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))
        prec = np.linalg.pinv(cov)
        diff = ft[:, None, :] - mu[None]
        cols.append((-np.einsum("nkd,de,nke->nk", diff, prec, diff)).max(1))
    np.testing.assert_allclose(det.confidences(xt).numpy(), np.stack(cols, 1), rtol=2e-3,
                               atol=1e-3)
    xg = xt.clone().requires_grad_(True)
    torch.testing.assert_close(det.score_torch(xg).detach(), det.score(xt), rtol=1e-4,
                               atol=1e-4)
