"""MagNet: the autoencoder, the reformer and the detector's components, by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import jensenshannon

from advlab.defenses.magnet import AutoEncoder, MagNet, Reformer, jsd, train_autoencoder
from advlab.errors import InputError, UnknownNameError
from advlab.validation import check_eval_mode


def _data(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_jsd_matches_scipy() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g).double(), torch.randn(5, 4, generator=g).double()
    for t in (1.0, 10.0):
        p, q = F.softmax(a / t, 1).numpy(), F.softmax(b / t, 1).numpy()
        expected = [jensenshannon(pi, qi) ** 2 for pi, qi in zip(p, q)]
        np.testing.assert_allclose(jsd(a, b, t).numpy(), expected, rtol=1e-6)


def test_autoencoder_trains_seeded_without_global_rng() -> None:
    x = _data(64, 1)
    rng = torch.get_rng_state()
    ae = train_autoencoder(x, epochs=6, batch_size=32, seed=3)
    assert torch.equal(rng, torch.get_rng_state())
    untrained = AutoEncoder(seed=3)
    with torch.no_grad():
        out = ae(x)
        assert out.shape == x.shape and out.min() > 0 and out.max() < 1
        assert F.mse_loss(out, x) < F.mse_loss(untrained(x), x)
    again = train_autoencoder(x, epochs=6, batch_size=32, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(ae.parameters(), again.parameters()))
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())
    with pytest.raises(InputError):
        train_autoencoder(torch.rand(4, 1, 7, 7))


def test_reformer(tiny_factory) -> None:
    model, ae = tiny_factory(0), AutoEncoder(seed=1)
    ref = Reformer(model, ae)
    check_eval_mode(ref)
    x = _data(5, 2)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), model(ae(x)))


def test_magnet_components_by_hand(tiny_factory) -> None:
    model, x = tiny_factory(0), _data(100, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    ae = AutoEncoder(seed=1)
    det = MagNet(ae, components=("l1", "l2", "jsd10"), validation=0.2, seed=4).fit(model, x, y)
    xt = _data(10, 2)
    with torch.no_grad():
        rec = ae(xt)
        l1 = (xt - rec).abs().flatten(1).mean(1)
        l2 = (xt - rec).pow(2).flatten(1).mean(1).sqrt()
        j = jsd(model(xt), model(rec), 10.0)
        val = torch.randperm(100, generator=torch.Generator().manual_seed(4))[:20]
        scale = (x[val] - ae(x[val])).abs().flatten(1).mean(1).quantile(0.99)
    comps = det.components_of(xt)
    torch.testing.assert_close(comps["l1"], l1)
    torch.testing.assert_close(comps["l2"], l2)
    torch.testing.assert_close(comps["jsd10"], j)
    assert det.scale_["l1"] == pytest.approx(scale.item(), rel=1e-5)
    expected = torch.stack([l1 / det.scale_["l1"], l2 / det.scale_["l2"],
                            j / det.scale_["jsd10"]]).amax(0)
    torch.testing.assert_close(det.score(xt), expected)
    torch.testing.assert_close(det.score_torch(xt.clone().requires_grad_(True)).detach(),
                               expected)
    torch.testing.assert_close(det.reformer()(xt), model(ae(xt)))
    with pytest.raises(UnknownNameError):
        MagNet(components=("l3",))


def test_magnet_leaves_the_model_untouched_and_reformer_adaptive(tiny_factory, guard) -> None:
    from advlab import attacks
    from advlab.detectors import DetectorAwarePGD

    model, x = tiny_factory(0), _data(60, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    check = guard(model)
    det = MagNet(components=("l2", "jsd10"), epochs=2, seed=0).fit(model, x, y)
    ref = det.reformer()
    adv = ref.adaptive(steps=5)
    assert adv.model is ref and adv.eot_samples == 1 and adv.detector is det
    res = attacks.get(adv.attack, eps=0.3, **adv.attack_kwargs)(adv.model, x[:8], y[:8])
    with torch.no_grad():  # the attack ran through the autoencoder: it judges model(AE(x))
        assert torch.equal(res.success, ref(res.x_adv).argmax(1) != y[:8])
    det.threshold(x[8:], fpr=0.1)  # "undetected" needs a threshold
    DetectorAwarePGD(adv.detector, eps=0.3, steps=3)(adv.model, x[:8], y[:8])
    det.score(x[:8])
    check()
    assert Reformer(model, det.autoencoder_).adaptive().detector is None
