"""Each detector's numbers recomputed by hand (numpy / plain torch) on small models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlab.attacks import FGSM
from advlab.detectors import (
    LID,
    DefensePerturbation,
    Ensemble,
    FeatureDistance,
    FeatureSqueezing,
    Mahalanobis,
    NetworkVote,
    TransformationDetector,
)
from advlab.detectors.learned import train_binary
from advlab.detectors.lid import lid_mle
from advlab.transforms import BitDepth, Translate


def _data(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def setup(tiny_factory):  # noqa: ANN201
    model = tiny_factory(0)
    x, xt = _data(100, 1), _data(20, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, xt


def _acts(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        conv = model.conv(x)
        return {"conv": conv, "fc": model(x)}


def test_feature_distance_space_by_hand(setup) -> None:
    model, x, y, xt = setup
    det = FeatureDistance(["conv", "fc"], hidden=0, attacks=[FGSM(eps=0.3)], n_adv=40,
                          epochs=10).fit(model, x, y)
    a, at = _acts(model, x), _acts(model, xt)
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


def test_lid_closed_form() -> None:
    d = torch.tensor([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]])
    m = np.mean(np.log([0.25, 0.5, 1.0]))
    assert lid_mle(d)[0].item() == pytest.approx(-1 / m)
    assert lid_mle(d)[1].item() > 1e10  # all at the same distance: unbounded estimate
    # points uniform in a d-dimensional ball have LID d: radii r = u^(1/d), sorted
    g = torch.Generator().manual_seed(0)
    r = torch.rand(2000, 100, generator=g).pow(1 / 5).sort(1).values
    assert lid_mle(r).mean().item() == pytest.approx(5.0, rel=0.05)


def test_lid_features_by_hand(setup) -> None:
    model, x, y, xt = setup
    det = LID(["conv", "fc"], k=4, reference=30, attacks=[FGSM(eps=0.3)], n_adv=30, epochs=10,
              seed=3).fit(model, x, y)
    ref = torch.randperm(100, generator=torch.Generator().manual_seed(3))[:30]
    a, at = _acts(model, x[ref]), _acts(model, xt)
    cols = []
    for name in ("conv", "fc"):
        d = torch.cdist(at[name].flatten(1), a[name].flatten(1)).sort(1).values[:, :4].numpy()
        cols.append(-1 / np.mean(np.log(d / d[:, -1:]), 1))
    np.testing.assert_allclose(det.features(xt).numpy(), np.stack(cols, 1), rtol=1e-3)
    xg = xt.clone().requires_grad_(True)
    torch.testing.assert_close(det.score_torch(xg).detach(), det.score(xt))


def test_mahalanobis_by_hand(setup) -> None:
    model, x, y, xt = setup
    det = Mahalanobis(["conv", "fc"], attacks=[FGSM(eps=0.3)], n_adv=30,
                      epochs=10).fit(model, x, y)
    a, at = _acts(model, x), _acts(model, xt)
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


def test_feature_squeezing_by_hand(setup) -> None:
    model, x, y, xt = setup
    det = FeatureSqueezing({"bits": BitDepth(1)}).fit(model, x, y)
    with torch.no_grad():
        p, q = F.softmax(model(xt), 1), F.softmax(model(torch.round(xt)), 1)
    torch.testing.assert_close(det.score(xt), (p - q).abs().sum(1))
    xg = xt.clone().requires_grad_(True)
    s = det.score_torch(xg)
    torch.testing.assert_close(s.detach(), det.score(xt))
    (g,) = torch.autograd.grad(s.sum(), xg)  # BPDA: gradient through the identity
    assert g.abs().sum() > 0


@pytest.mark.parametrize("measure", ["label", "kl", "l1"])
def test_transformation_detector_by_hand(setup, measure: str) -> None:
    model, x, y, xt = setup
    det = TransformationDetector({"right": Translate(1, 0)}, measure=measure,
                                 combine="right").fit(model, x, y)
    with torch.no_grad():
        lp, lq = model(xt), model(torch.roll(xt, 1, 3).index_fill(3, torch.tensor([0]), 0.0))
    p, q = F.softmax(lp, 1), F.softmax(lq, 1)
    expected = {"label": (lp.argmax(1) != lq.argmax(1)).float(),
                "kl": (p * (p.log() - q.log())).sum(1),
                "l1": (p - q).abs().sum(1)}[measure]
    torch.testing.assert_close(det.score(xt), expected, rtol=1e-4, atol=1e-5)


def test_vote_of_transformations(setup) -> None:
    model, x, y, xt = setup
    ts = {"right": Translate(1, 0), "down": Translate(0, 1), "left": Translate(-1, 0)}
    det = TransformationDetector(ts, measure="label", combine="vote").fit(model, x, y)
    per = det.per_transform_scores(xt)
    torch.testing.assert_close(det.score(xt), torch.stack(list(per.values())).mean(0))
    mean = TransformationDetector(ts, measure="kl", combine="mean").fit(model, x, y)
    per = mean.per_transform_scores(xt)
    expected = torch.stack([per[n] / mean.scale_[n] for n in ts]).mean(0)
    torch.testing.assert_close(mean.score(xt), expected)


def test_defense_perturbation(setup) -> None:
    model, _, _, xt = setup
    dp = DefensePerturbation(eps=0.05, steps=3)
    x_def = dp(model, xt, torch.Generator().manual_seed(0))
    assert (x_def - xt).abs().max() <= 0.05 + 1e-6
    assert x_def.min() >= 0 and x_def.max() <= 1
    with torch.no_grad():
        y_hat = model(xt).argmax(1)
        before = F.softmax(model(xt), 1).gather(1, y_hat[:, None])
        after = F.softmax(model(x_def), 1).gather(1, y_hat[:, None])
    assert (after <= before + 1e-6).all() and (after < before).float().mean() > 0.9


def test_ensemble_and_network_vote(setup, tiny_factory) -> None:
    model, x, y, xt = setup
    others = [tiny_factory(1), tiny_factory(2)]
    ens = Ensemble([model, *others])
    assert not ens.training
    with torch.no_grad():
        expected = torch.stack([F.log_softmax(m(xt), 1) for m in [model, *others]]).mean(0)
        labels = torch.stack([m(xt).argmax(1) for m in [model, *others]])
    torch.testing.assert_close(ens(xt), expected)
    det = NetworkVote(others).fit(model, x, y)
    torch.testing.assert_close(det.score(xt), (labels != labels[0]).float().mean(0))
    same = NetworkVote([tiny_factory(0)]).fit(model, x, y)
    assert (same.score(xt) == 0).all()
    counts = F.one_hot(labels, 10).sum(0)
    unique = (counts.max(1).values >= 2)
    assert torch.equal(det.majority(xt)[unique], counts.argmax(1)[unique])


def test_train_binary_separates_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(50, 3, generator=g), torch.randn(30, 3, generator=g) + 4.0
    clf = train_binary(clean, adv, epochs=100, seed=1)
    assert (clf(clean) < 0).all() and (clf(adv) > 0).all()
    again = train_binary(clean, adv, epochs=100, seed=1)
    assert torch.equal(clf(clean), again(clean))
    assert not any(p.requires_grad for p in clf.parameters())
