"""EAD: the shrinkage-thresholding operator against numpy, the L1 and L2 minima of a linear
classifier in closed form, then sparsity on the zoo model beside an L2 attack."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import advlab
from advlab.attacks import EAD, DeepFool
from advlab.attacks.ead import shrink
from testkit import linear_setup


def test_shrink_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 5, 5, generator=g)
    z = x + (torch.rand(x.shape, generator=g) - 0.5)
    beta = 0.1
    xn, zn = x.numpy(), z.numpy()
    want = np.where(zn - xn > beta, np.minimum(zn - beta, 1.0),
                    np.where(zn - xn < -beta, np.maximum(zn + beta, 0.0), xn))
    np.testing.assert_allclose(shrink(z, x, beta).numpy(), want, rtol=0, atol=0)


def test_beta_zero_finds_the_l2_minimum() -> None:
    """With beta = 0 the objective is C&W L2's: the result is the closest point of the
    linear boundary, |m| / ||w||_2 away."""
    model, x, y, m, w = linear_setup(n=6)
    res = EAD(beta=0.0, steps=200)(model, x, y)
    assert res.success.all()
    want = m / w.norm()
    assert (res.norms["l2"] >= want * (1 - 1e-9)).all()
    torch.testing.assert_close(res.norms["l2"], want, rtol=2e-3, atol=0)


def test_large_beta_moves_one_pixel_like_the_l1_minimum() -> None:
    """The L1 minimum of a linear boundary changes the one entry of largest |w_i| by
    |m| / max |w_i| (x in [0.4, 0.6] leaves room): EAD with a strong L1 weight finds it."""
    model, x, y, m, w = linear_setup(n=6)
    res = EAD(beta=0.1, rule="L1", steps=200)(model, x, y)
    assert res.success.all()
    want = m / w.abs().max()
    assert (res.norms["l1"] >= want * (1 - 1e-9)).all()
    torch.testing.assert_close(res.norms["l1"], want, rtol=0.03, atol=0)
    assert (res.norms["l0"] == 1).all()
    moved = (res.x_adv - x).flatten(1).abs().argmax(1)
    assert (moved == w.abs().argmax()).all()


def test_binary_search_constants_are_reported() -> None:
    model, x, y, _, _ = linear_setup(n=4)
    res = EAD(steps=20, search_steps=3, c0=1e-3)(model, x, y)
    c = res.info["c"]
    assert torch.isnan(c[~res.success]).all()  # no constant succeeded there
    assert (c[res.success] > 0).all()
    torch.testing.assert_close(res.info["distance"][res.success],
                               res.norms["l2"][res.success] ** 2
                               + 1e-3 * res.norms["l1"][res.success])


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        EAD(rule="L2")
    with pytest.raises(advlab.errors.ThreatModelError):
        EAD(beta=-1.0)


def test_cnn_sparser_than_an_l2_attack(cnn, mnist_test) -> None:
    """Every image fooled; the L1 rule's perturbations have well under the L1 norm of
    DeepFool's L2-minimal ones, and change fewer pixels."""
    x, y = mnist_test[0][:8], mnist_test[1][:8]
    res = EAD(rule="L1", beta=1e-2, steps=30, search_steps=5, c0=1.0)(cnn, x, y)
    assert res.success.all()
    df = DeepFool()(cnn, x, y)
    assert res.norms["l1"].median() < 0.7 * df.norms["l1"].median()
    assert res.norms["l0"].median() < 0.5 * df.norms["l0"].median()


def test_abort_early_stops_stalled_examples() -> None:
    """Examples whose objective stalls leave the batch: fewer model rows, same success."""
    from testkit import Counted

    model, x, y, _, _ = linear_setup(n=4)
    full, cut = Counted(model).eval(), Counted(model).eval()
    a = EAD(steps=50, search_steps=2)(full, x, y)
    b = EAD(steps=50, search_steps=2, abort_early=True)(cut, x, y)
    assert torch.equal(a.success, b.success)
    assert cut.rows < full.rows
