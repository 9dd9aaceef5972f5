"""Metrics against closed forms, numpy references and scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from advlab.errors import InputError
from advlab.evaluation import metrics as M


def test_accuracy_success_robust() -> None:
    y = np.array([0, 1, 2, 3])
    clean = np.array([0, 1, 2, 0])           # 3 of 4 right
    adv = np.array([5, 1, 7, 0])              # right on example 1 only
    success = adv != y
    assert M.accuracy(clean, y) == 0.75
    assert M.robust_accuracy(adv, y) == 0.25
    # fooled among the correctly classified ones (0, 1, 2): 0 and 2
    assert M.success_rate(success, clean, y) == pytest.approx(2 / 3)
    assert np.isnan(M.success_rate(success, np.array([1, 0, 0, 1]), y))


def test_median_norms_mask() -> None:
    norms = {"l2": torch.tensor([1.0, 2.0, 3.0, 10.0]), "linf": np.array([0.1, 0.2, 0.3, 0.4])}
    out = M.median_norms(norms, np.array([True, True, True, False]))
    assert out == {"l2": 2.0, "linf": pytest.approx(0.2)}
    assert np.isnan(M.median_norms(norms, np.zeros(4, bool))["l2"])


def test_wrong_confidence_transfer_revert() -> None:
    y = np.array([0, 0, 0, 0, 0])
    adv_pred = np.array([1, 2, 0, 3, 0])
    conf = np.array([0.9, 0.7, 0.99, 0.5, 0.6])
    assert M.wrong_confidence(conf, adv_pred, y) == pytest.approx((0.9 + 0.7 + 0.5) / 3)
    src_success = np.array([True, True, True, False, True])
    tgt_clean = np.array([0, 0, 4, 0, 0])     # target wrong on clean example 2: not counted
    tgt_adv = np.array([3, 0, 3, 3, 0])
    # qualifying: 0, 1, 4 -> fooled: 0 only
    assert M.transfer_rate(src_success, tgt_clean, tgt_adv, y) == pytest.approx(1 / 3)
    probe = np.array([0, 2, 0, 0, 1])
    # successful: 0, 1, 2, 4 -> back to the true class: 0 and 2
    assert M.revert_rate(probe, src_success, y) == pytest.approx(0.5)


def test_translate_is_numpy_roll() -> None:
    x = torch.arange(2 * 1 * 5 * 6, dtype=torch.float32).reshape(2, 1, 5, 6)
    assert np.array_equal(M.translate(x, 2).numpy(), np.roll(x.numpy(), 2, axis=3))
    ref = np.roll(x.numpy(), shift=(-1, 2), axis=(2, 3))
    assert np.array_equal(M.translate(x, 2, -1).numpy(), ref)
    assert torch.equal(M.translate(x, 0), x)


def test_gaussian_noise_seeded_and_clipped() -> None:
    x = torch.full((3, 1, 4, 4), 0.5)
    a = M.gaussian_noise(x, 0.1, torch.Generator().manual_seed(3))
    b = M.gaussian_noise(x, 0.1, torch.Generator().manual_seed(3))
    ref = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    assert torch.equal(a, b) and torch.equal(a, ref)
    big = M.gaussian_noise(x, 10.0, torch.Generator().manual_seed(0))
    assert big.min() >= 0 and big.max() <= 1 and (big == 0).any() and (big == 1).any()


def _ssim_numpy(a: np.ndarray, b: np.ndarray, w: int = 7) -> float:
    """Direct loop over every w x w window (scikit-image's definition)."""
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(a.shape[0] - w + 1):
        for j in range(a.shape[1] - w + 1):
            p, q = a[i:i + w, j:j + w].ravel(), b[i:i + w, j:j + w].ravel()
            mp, mq = p.mean(), q.mean()
            vp, vq = p.var(ddof=1), q.var(ddof=1)
            cov = ((p - mp) * (q - mq)).sum() / (p.size - 1)
            vals.append((2 * mp * mq + c1) * (2 * cov + c2)
                        / ((mp**2 + mq**2 + c1) * (vp + vq + c2)))
    return float(np.mean(vals))


def test_ssim_matches_window_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 12, 10, generator=g)
    xa = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    got = M.ssim(x, xa)
    for i in range(3):
        assert got[i].item() == pytest.approx(_ssim_numpy(x[i, 0].double().numpy(),
                                                          xa[i, 0].double().numpy()), abs=1e-6)
    assert torch.allclose(M.ssim(x, x), torch.ones(3))
    assert torch.allclose(M.ssim(x, xa), M.ssim(xa, x))


def test_ssim_multichannel_and_errors() -> None:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = x.flip(0)
    per_channel = torch.stack([M.ssim(x[:, c:c + 1], y[:, c:c + 1]) for c in range(3)], 1)
    assert torch.allclose(M.ssim(x, y), per_channel.mean(1), atol=1e-6)
    with pytest.raises(InputError):
        M.ssim(x, x[:1])
    with pytest.raises(InputError):
        M.ssim(torch.rand(1, 1, 5, 5), torch.rand(1, 1, 5, 5))


def test_roc_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    neg = rng.integers(0, 10, 200).astype(float)   # many ties
    pos = rng.integers(3, 13, 150).astype(float)
    labels = np.r_[np.zeros(200), np.ones(150)]
    scores = np.r_[neg, pos]
    assert M.roc_auc(neg, pos) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thr = M.roc_curve(neg, pos)
    sk_fpr, sk_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(thr) < 0)


def test_roc_closed_forms() -> None:
    assert M.roc_auc([0.0, 1.0], [2.0, 3.0]) == 1.0      # perfectly separated
    assert M.roc_auc([2.0, 3.0], [0.0, 1.0]) == 0.0      # perfectly wrong way round
    assert M.roc_auc([1.0, 1.0], [1.0]) == 0.5            # all tied
    # neg 0..9, pos 5..14: at threshold 10 no clean input is flagged, 5 of 10 AEs are
    neg, pos = np.arange(10.0), np.arange(5.0, 15.0)
    assert M.tpr_at_fpr(neg, pos, 0.0) == 0.5
    assert M.tpr_at_fpr(neg, pos, 0.1) == 0.6            # threshold 9: 1 clean flagged
    with pytest.raises(InputError):
        M.roc_curve([], [1.0])
    with pytest.raises(InputError):
        M.roc_curve([np.nan], [1.0])


def test_query_and_norm_curves() -> None:
    q = np.array([10, 100, 1000, 5])
    s = np.array([True, True, False, True])
    assert np.allclose(M.success_vs_queries(q, s, [1, 10, 100, 10_000]), [0, 0.5, 0.75, 0.75])
    y = np.array([0, 0, 0, 0])
    clean = np.array([0, 0, 0, 1])                # example 3 wrong from the start
    norms = np.array([0.1, 0.3, 0.5, 0.0])
    succ = np.array([True, True, False, True])
    # eps 0: 3 right; eps 0.2: ex 0 fooled; eps 0.4: ex 0, 1 fooled; failed ex 2 stays
    assert np.allclose(M.accuracy_vs_norm(norms, succ, clean, y, [0.0, 0.2, 0.4, 9]),
                       [0.75, 0.5, 0.25, 0.25])
