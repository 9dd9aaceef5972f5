"""The adaptive attack on detectors: contract and effect on a small model."""
from __future__ import annotations

import pytest
import torch

from advlab.attacks import PGD
from advlab.detectors import DeepKNN, DetectorAwarePGD, FeatureSqueezing
from advlab.errors import AttackError


class Opaque(DeepKNN):
    differentiable = False


def test_needs_a_differentiable_detector() -> None:
    with pytest.raises(AttackError):
        DetectorAwarePGD(Opaque(k=3))
    with pytest.raises(AttackError):
        DetectorAwarePGD("not a detector")  # type: ignore[arg-type]
    with pytest.raises(AttackError):
        Opaque(k=3).score_torch(torch.rand(2, 1, 8, 8))


def test_adaptive_attack_contract_and_effect(tiny_factory, more_images) -> None:
    model = tiny_factory(0)
    x, xc = more_images(60, 1), more_images(60, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    det = FeatureSqueezing().fit(model, x, y)
    tau = det.threshold(xc, fpr=0.1)
    naive = PGD(eps=0.1, steps=20)(model, x, y)
    atk = DetectorAwarePGD(det, lam=10.0, eps=0.1, steps=20)
    x0 = x.clone()
    res = atk(model, x, y)
    again = atk(model, x, y)
    assert torch.equal(x, x0) and torch.equal(res.x_adv, again.x_adv)
    assert (res.x_adv - x).abs().amax() <= 0.1 + 1e-6
    assert torch.equal(res.info["score"], det.score(res.x_adv))
    assert torch.equal(res.info["evaded"], res.success & (det.score(res.x_adv) <= tau))
    naive_evaded = (naive.success & ~det.detect(naive.x_adv)).float().mean()
    assert res.info["evaded"].float().mean() > naive_evaded
    assert res.info["evaded"].float().mean() > 0.8
