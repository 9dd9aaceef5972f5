"""The detector contract, over one small configuration of every detector.

Not fitted -> NotFittedError; fitted on one model -> refuses another (and refuses the same
model after its weights changed); wrong input shapes -> InputError; the model's mode,
parameters, .grad, buffers and hooks, the caller's tensors and the global RNG unchanged; the
same seed giving the same scores; the calibrated threshold achieving the false-positive rate on
the calibration set; differentiable scores giving finite input gradients and no parameter
gradients.
"""
from __future__ import annotations

import copy

import pytest
import torch

from advlab.errors import InputError, NotFittedError
from testkit import assert_same_state, model_state


def test_not_fitted(detector_name: str, make_detector, tiny_factory, data) -> None:
    det = make_detector(detector_name)
    _, _, xc = data
    with pytest.raises(NotFittedError):
        det.score(xc)
    with pytest.raises(NotFittedError):
        det.threshold(xc)
    with pytest.raises(NotFittedError):
        det.detect(xc)


def test_model_and_caller_untouched_and_fpr(detector_name: str, make_detector, tiny_factory,
                                            data) -> None:
    model = tiny_factory(0)
    x, y, xc = data
    x0, y0, xc0 = x.clone(), y.clone(), xc.clone()
    det = make_detector(detector_name)  # (building voter models draws from the global RNG)
    before = model_state(model)
    rng = torch.get_rng_state()
    det.fit(model, x, y)
    scores = det.score(xc)
    t = det.threshold(xc, fpr=0.1)
    flagged = det.detect(xc)
    if det.differentiable:
        xg = xc[:8].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(det.score_torch(xg).sum(), xg)
        assert torch.isfinite(g).all()
    assert torch.equal(rng, torch.get_rng_state()), "global RNG touched"
    assert torch.equal(x, x0) and torch.equal(y, y0) and torch.equal(xc, xc0)
    assert_same_state(before, model_state(model))
    assert scores.shape == (len(xc),) and torch.isfinite(scores).all()
    assert flagged.dtype == torch.bool and flagged.shape == (len(xc),)
    assert int((scores > t).sum()) <= int(0.1 * len(xc))  # at most fpr of the clean set
    assert torch.equal(flagged, scores > t)


def test_deterministic(detector_name: str, make_detector, tiny_factory, data) -> None:
    x, y, xc = data
    a = make_detector(detector_name).fit(tiny_factory(0), x, y).score(xc)
    b = make_detector(detector_name).fit(tiny_factory(0), x, y).score(xc)
    assert torch.equal(a, b)


def test_wrong_inputs(detector_name: str, make_detector, tiny_factory, data) -> None:
    x, y, xc = data
    det = make_detector(detector_name).fit(tiny_factory(0), x, y)
    with pytest.raises(InputError, match="shape"):
        det.score(torch.rand(4, 1, 10, 10))
    with pytest.raises(InputError, match="N x C x H x W"):
        det.score(torch.rand(4, 8, 8))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        det.score(xc * 3)


def test_refuses_another_model(detector_name: str, make_detector, tiny_factory, data) -> None:
    x, y, xc = data
    model = tiny_factory(0)
    det = make_detector(detector_name).fit(model, x, y)
    expected = det.score(xc)
    assert torch.equal(det.score(xc, model=copy.deepcopy(model)), expected)  # same weights
    with pytest.raises(NotFittedError, match="another model"):
        det.score(xc, model=tiny_factory(5))
    with torch.no_grad():
        model.fc.bias.add_(0.1)  # the fitted model changed after fit
    with pytest.raises(NotFittedError, match="changed"):
        det.score(xc)


def test_fit_validates(make_detector, more_images, tiny_factory, data) -> None:
    x, y, _ = data
    det = make_detector("knn")
    with pytest.raises(InputError):
        det.fit(tiny_factory(0), x, y, x_adv=more_images(4, 3))  # unsupervised: no x_adv
    with pytest.raises(Exception, match="train mode"):
        det.fit(tiny_factory(0).train(), x, y)
