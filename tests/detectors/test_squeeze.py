"""Feature squeezing (detectors/squeeze.py): the score recomputed by hand, and its BPDA
gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from advlab.detectors import FeatureSqueezing
from advlab.transforms import BitDepth


def test_feature_squeezing_by_hand(by_hand) -> None:
    model, x, y, xt = by_hand
    det = FeatureSqueezing({"bits": BitDepth(1)}).fit(model, x, y)
    with torch.no_grad():
        p, q = F.softmax(model(xt), 1), F.softmax(model(torch.round(xt)), 1)
    torch.testing.assert_close(det.score(xt), (p - q).abs().sum(1))
    xg = xt.clone().requires_grad_(True)
    s = det.score_torch(xg)
    torch.testing.assert_close(s.detach(), det.score(xt))
    (g,) = torch.autograd.grad(s.sum(), xg)  # BPDA: gradient through the identity
    assert g.abs().sum() > 0
