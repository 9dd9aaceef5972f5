"""The transformation detector and the defense perturbation (detectors/transformation.py):
scores recomputed by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advlab.detectors import DefensePerturbation, TransformationDetector
from advlab.transforms import Translate


@pytest.mark.parametrize("measure", ["label", "kl", "l1"])
def test_transformation_detector_by_hand(by_hand, measure: str) -> None:
    model, x, y, xt = by_hand
    det = TransformationDetector({"right": Translate(1, 0)}, measure=measure,
                                 combine="right").fit(model, x, y)
    with torch.no_grad():
        lp, lq = model(xt), model(torch.roll(xt, 1, 3).index_fill(3, torch.tensor([0]), 0.0))
    p, q = F.softmax(lp, 1), F.softmax(lq, 1)
    expected = {"label": (lp.argmax(1) != lq.argmax(1)).float(),
                "kl": (p * (p.log() - q.log())).sum(1),
                "l1": (p - q).abs().sum(1)}[measure]
    torch.testing.assert_close(det.score(xt), expected, rtol=1e-4, atol=1e-5)


def test_vote_of_transformations(by_hand) -> None:
    model, x, y, xt = by_hand
    ts = {"right": Translate(1, 0), "down": Translate(0, 1), "left": Translate(-1, 0)}
    det = TransformationDetector(ts, measure="label", combine="vote").fit(model, x, y)
    per = det.per_transform_scores(xt)
    torch.testing.assert_close(det.score(xt), torch.stack(list(per.values())).mean(0))
    mean = TransformationDetector(ts, measure="kl", combine="mean").fit(model, x, y)
    per = mean.per_transform_scores(xt)
    expected = torch.stack([per[n] / mean.scale_[n] for n in ts]).mean(0)
    torch.testing.assert_close(mean.score(xt), expected)


def test_defense_perturbation(by_hand) -> None:
    model, _, _, xt = by_hand
    dp = DefensePerturbation(eps=0.05, steps=3)
    x_def = dp(model, xt, torch.Generator().manual_seed(0))
    assert (x_def - xt).abs().max() <= 0.05 + 1e-6
    assert x_def.min() >= 0 and x_def.max() <= 1
    with torch.no_grad():
        y_hat = model(xt).argmax(1)
        before = F.softmax(model(xt), 1).gather(1, y_hat[:, None])
        after = F.softmax(model(x_def), 1).gather(1, y_hat[:, None])
    assert (after <= before + 1e-6).all() and (after < before).float().mean() > 0.9
