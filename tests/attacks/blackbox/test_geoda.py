"""GeoDA: the query allocation, probes in the low-frequency DCT subspace, the normal estimate
and the minimal distance on a linear model (closed form), strength beside HopSkipJump."""
from __future__ import annotations

import pytest
import torch

import advlab
from advlab.attacks.blackbox.decision import Decision
from advlab.attacks.blackbox.geoda import GeoDA, allocation, low_frequency
from advlab.attacks.blackbox.oracle import Oracle
from advlab.transforms import dct_matrix
from testkit import linear_setup


def test_allocation_sums_to_the_budget_and_grows() -> None:
    n = allocation(1000, 6, 0.6)
    assert sum(n) == 1000 and n == sorted(n)
    ratio = n[4] / n[3]
    assert ratio == pytest.approx(0.6 ** (-2 / 3), rel=0.05)


def test_probes_live_in_the_low_frequencies() -> None:
    like = torch.zeros(1, dtype=torch.float64)
    eta = low_frequency(5, (2, 8, 6), 3, torch.Generator().manual_seed(0), like)
    coef = dct_matrix(8, torch.float64) @ eta @ dct_matrix(6, torch.float64).T
    assert eta.shape == (5, 2, 8, 6)
    assert coef[..., 3:, :].abs().max() < 1e-12 and coef[..., :, 3:].abs().max() < 1e-12
    z = torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(coef[..., :3, :3], z)  # orthonormal: the draws themselves


def test_normal_estimate_aligns_with_a_linear_boundary() -> None:
    model, x, y, margin, w = linear_setup(8)
    oracle = Oracle(model, "labels")
    oracle.reset(8)
    w_d = torch.where((y == 0)[:, None], w, -w).view(8, 1, 4, 4)
    at = x + (margin / w.norm() ** 2).view(8, 1, 1, 1) * w_d  # on the boundary
    normal = GeoDA(sub_dim=4, sigma=1e-3)._probe(Decision(oracle, y, None), at,
                                                 torch.arange(8), 400,
                                                 torch.Generator().manual_seed(1))
    cos = (normal * w_d).flatten(1).sum(1) / (w_d.flatten(1).norm(dim=1)
                                              * normal.flatten(1).norm(dim=1))
    assert (cos > 0.85).all()


def test_linear_model_reaches_the_minimal_distance() -> None:
    model, x, y, margin, w = linear_setup(6)
    res = GeoDA(max_queries=2000, sub_dim=4, sigma=1e-3)(model, x, y)
    assert res.success.all() and (res.queries <= 2000).all()
    best = margin / w.norm()
    assert (res.norms["l2"] <= 1.02 * best).all() and (res.norms["l2"] >= best - 1e-9).all()


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        GeoDA(sigma=0)


def test_mlp_beside_hopskipjump(mlp, mnist_test) -> None:
    """1,000 label queries from the same batch starts: every image fooled, median L2 within
    1.15x of HopSkipJump's (1.48 vs 1.82 on 20 images; benchmarks/blackbox_label_minnorm.py
    has ART's)."""
    x, y = mnist_test[0][:12], mnist_test[1][:12]
    ok = mlp(x).argmax(1) == y
    x, y = x[ok], y[ok]
    res = GeoDA(max_queries=1000)(mlp, x, y)
    hsj = advlab.attacks.get("hopskipjump", max_queries=1000, init="auto")(mlp, x, y)
    start = advlab.attacks.get("hopskipjump", max_queries=1, init="auto")(mlp, x, y)
    assert res.success.all() and (res.queries <= 1000).all()
    assert res.norms["l2"].median() < 0.5 * start.norms["l2"].median()
    assert res.norms["l2"].median() <= 1.15 * hsj.norms["l2"].median()
