"""SparseFool: the greedy linear solver against a plain numpy loop (with saturating box
coordinates), one iteration on a linear classifier as the paper's steps written out, then
sparsity on the zoo model beside DeepFool."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import advlab
from advlab.attacks import DeepFool, SparseFool
from advlab.attacks.sparsefool import BETA, linear_solver
from testkit import linear_setup


def greedy(x: np.ndarray, w: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """The solver, one row, as a loop: largest |w_j| first until w.(z - xb) >= 0."""
    z = x.copy()
    for j in np.argsort(-np.abs(w), kind="stable"):
        f = w @ (z - xb)
        if f >= 0 or w[j] == 0:
            break
        z[j] = np.clip(z[j] + max((abs(f) + BETA) / abs(w[j]), 1e-4) * np.sign(w[j]), 0, 1)
    return z


def test_linear_solver_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 4, 4, generator=g, dtype=torch.float64)
    w = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.05, 0.5, 2.0, 5.0, -1.0], dtype=torch.float64)  # far: saturation
    xb = x + shift.view(-1, 1, 1, 1) * w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    got = linear_solver(x, w, xb).flatten(1).numpy()
    for i in range(5):
        want = greedy(x[i].flatten().numpy(), w[i].flatten().numpy(), xb[i].flatten().numpy())
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-12)
    assert np.array_equal(got[4], x[4].flatten().numpy())  # already across: unchanged


@pytest.mark.parametrize("lam", [1.0, 3.0])
def test_linear_model_one_iteration(lam: float) -> None:
    model, x, y, _, w = linear_setup(n=4)
    res = SparseFool(lam=lam)(model, x, y)
    assert res.success.all() and (res.info["iterations"] == 1).all()
    x_df = DeepFool()(model, x, y).x_adv
    xb = x + lam * (x_df - x)
    sign = torch.where(y == 0, 1.0, -1.0).to(w.dtype)  # the normal points away from y
    wn = (sign[:, None] * w / w.norm()).numpy()
    for i in range(4):
        z = greedy(x[i].flatten().numpy(), wn[i], xb[i].flatten().numpy())
        want = np.clip(x[i].flatten().numpy() + 1.02 * (z - x[i].flatten().numpy()), 0, 1)
        np.testing.assert_allclose(res.x_adv[i].flatten().numpy(), want, atol=1e-12, rtol=0)


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        SparseFool(lam=0.5)


def test_cnn_sparse_beside_deepfool(cnn, mnist_test) -> None:
    """Every image fooled, changing a small fraction of the pixels DeepFool changes."""
    x, y = mnist_test[0][:10], mnist_test[1][:10]
    res = SparseFool()(cnn, x, y)
    assert res.success.all()
    df = DeepFool()(cnn, x, y)
    assert res.norms["l0"].median() < 0.2 * df.norms["l0"].median()
