"""Detection metrics against scikit-learn and the lecture's definitions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from advlab.detectors.roc import (
    calibrate_threshold,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
    tpr_fpr,
    trapezoid_auc,
)
from advlab.errors import InputError

scores = st.lists(st.integers(0, 6).map(float), min_size=1, max_size=30)  # many ties


@settings(max_examples=60, deadline=None)
@given(clean=scores, adv=scores)
def test_auc_matches_sklearn(clean: list[float], adv: list[float]) -> None:
    labels = [0] * len(clean) + [1] * len(adv)
    expected = roc_auc_score(labels, clean + adv)
    assert roc_auc(clean, adv) == pytest.approx(expected, abs=1e-12)
    fpr, tpr, _ = roc_curve(torch.tensor(clean), torch.tensor(adv))
    assert trapezoid_auc(fpr, tpr) == pytest.approx(expected, abs=1e-12)


def test_roc_curve_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    clean, adv = rng.normal(0, 1, 200).round(1), rng.normal(1, 1, 150).round(1)
    fpr, tpr, thr = roc_curve(clean, adv)
    labels = np.r_[np.zeros(200), np.ones(150)]
    f2, t2, th2 = sk_roc_curve(labels, np.r_[clean, adv], drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    np.testing.assert_allclose(thr[1:], th2[1:])
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0


def test_lecture_rates() -> None:
    # TP = #AEs detected / #AEs; FP = #noAEs detected / #noAEs, detected = score > threshold
    clean = [0.1, 0.2, 0.3, 0.9]
    adv = [0.5, 0.6, 0.05]
    assert tpr_fpr(clean, adv, 0.4) == (pytest.approx(2 / 3), pytest.approx(1 / 4))


@settings(max_examples=60, deadline=None)
@given(s=st.lists(st.integers(0, 20).map(float), min_size=1, max_size=60),
       fpr=st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.29, 0.5, 0.9]))
def test_threshold_calibration(s: list[float], fpr: float) -> None:
    a = np.asarray(s)
    t = calibrate_threshold(a, fpr)
    assert (a > t).sum() <= int(np.floor(fpr * len(a) + 1e-9))
    # tightest: any lower score of the set as threshold would flag more than allowed
    lower = a[a < t]
    if len(lower):
        assert (a > lower.max()).sum() > int(np.floor(fpr * len(a) + 1e-9))


def test_tpr_at_fpr_and_errors() -> None:
    clean = np.arange(100.0)
    tp, fp, t = tpr_at_fpr(clean, [50.0, 97.5, 200.0], fpr=0.03)
    assert t == 96.0 and fp == pytest.approx(0.03) and tp == pytest.approx(2 / 3)
    with pytest.raises(InputError):
        calibrate_threshold(clean, 1.0)
    with pytest.raises(InputError):
        roc_auc([], [1.0])
    with pytest.raises(InputError):
        roc_auc([float("nan")], [1.0])
