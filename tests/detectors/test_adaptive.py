"""The adaptive attack on detectors: contract and effect on a small model."""
from __future__ import annotations

import pytest
import torch

from advlab.attacks import PGD
from advlab.detectors import DeepKNN, DetectorAwarePGD, FeatureSqueezing
from advlab.errors import AttackError, NotFittedError, ParameterError


class Opaque(DeepKNN):
    differentiable = False


def test_needs_a_differentiable_detector() -> None:
    with pytest.raises(AttackError):
        DetectorAwarePGD(Opaque(k=3))
    with pytest.raises(ParameterError, match="detector must be a Detector"):
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
    x0, state, rng = x.clone(), {k: v.clone() for k, v in model.state_dict().items()}, \
        torch.random.get_rng_state()
    res = atk(model, x, y)
    again = atk(model, x, y)
    assert torch.equal(x, x0) and torch.equal(res.x_adv, again.x_adv)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert (res.x_adv - x).abs().amax() <= 0.1 + 1e-6
    assert torch.equal(res.info["score"], det.score(res.x_adv))
    assert torch.equal(res.info["evaded"], res.success & (det.score(res.x_adv) <= tau))
    naive_evaded = (naive.success & ~det.detect(naive.x_adv)).float().mean()
    assert res.info["evaded"].float().mean() > naive_evaded
    assert res.info["evaded"].float().mean() > 0.8


class Rescaled(FeatureSqueezing):
    """Feature squeezing whose differentiable score lives on another scale than its real
    score (as a surrogate does): 1024 s + 3."""

    def _score_torch(self, model, x, generator):  # noqa: ANN001, ANN202
        return 1024.0 * super()._score_torch(model, x, generator) + 3.0


def test_the_scale_of_the_differentiable_score_does_not_matter(tiny_factory,
                                                               more_images) -> None:
    """Success is judged on the real score and its threshold, and the detector's gradient
    enters with unit length: a surrogate on another scale gives the same attack."""
    model = tiny_factory(0)
    x, xc = more_images(40, 1), more_images(60, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    plain, rescaled = FeatureSqueezing().fit(model, x, y), Rescaled().fit(model, x, y)
    tau = plain.threshold(xc, fpr=0.1)
    assert rescaled.threshold(xc, fpr=0.1) == tau
    runs = [DetectorAwarePGD(d, eps=0.1, steps=10, kappa=1.0)(model, x, y)
            for d in (plain, rescaled)]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)
    assert runs[0].info["evaded"].any()


def test_an_evading_iterate_is_kept(tiny_factory, more_images) -> None:
    """An iterate that evades (below kappa) is noted and returned over a later iterate that
    does not; an evading one with margin kappa stops the example."""
    model = tiny_factory(0)
    x = more_images(40, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    det = FeatureSqueezing().fit(model, x, y)
    x_adv = PGD(eps=0.3, steps=20, early_stop=False, loss="margin")(model, x, y).x_adv
    x_adv = torch.cat([x_adv[:20], x[20:]])  # half adversarial, half clean
    det.threshold_ = float(det.score(x_adv).max())  # every misclassified x_adv evades
    with torch.no_grad():
        logits = model(x_adv)
    wrong = logits.argmax(1) != y
    assert wrong.any() and not wrong.all()
    atk = DetectorAwarePGD(det, kappa=float("inf"))
    memory = atk.init_memory(x)
    done = atk.succeeded(x_adv, logits, y, None, memory, None)
    assert not done.any()  # margin kappa = inf is never reached: nothing stops
    out = atk.result(x, memory)  # a last iterate that does not evade (the clean x)
    assert torch.equal(out[wrong], x_adv[wrong]) and torch.equal(out[~wrong], x[~wrong])
    atk = atk.replace(kappa=0.0)
    assert torch.equal(atk.succeeded(x_adv, logits, y, None, atk.init_memory(x), None), wrong)
    with pytest.raises(NotFittedError):
        DetectorAwarePGD(FeatureSqueezing().fit(model, x, y), steps=2)(model, x, y)


def test_targeted_reruns_only_add_evasions(tiny_factory, more_images) -> None:
    """The reruns at the next most likely classes touch only the examples that did not evade,
    and keep a result only where it evades."""
    model = tiny_factory(0)
    x, xc = more_images(40, 1), more_images(60, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    det = FeatureSqueezing().fit(model, x, y)
    det.threshold(xc, fpr=0.05)
    once, again = (DetectorAwarePGD(det, eps=0.1, steps=5, targets=t)(model, x, y)
                   for t in (0, 3))
    first = once.info["evaded"]
    assert torch.equal(again.x_adv[first], once.x_adv[first])
    assert (again.info["evaded"] >= first).all()
    new = again.info["evaded"] & ~first
    assert new.any() and not torch.equal(again.x_adv[new], once.x_adv[new])
