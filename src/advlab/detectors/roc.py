r"""Detection metrics: the lecture's TP and FP rates, threshold calibration, ROC and AUC.

The lecture's definitions, for a detector that flags an input when its score exceeds a
threshold :math:`\tau`:

.. math::  TP = \frac{\#\,AEs\ detected}{\#\,AEs}, \qquad
           FP = \frac{\#\,noAEs\ detected}{\#\,noAEs}

The ROC curve traces (FP, TP) as :math:`\tau` sweeps the scores; its area (AUC) equals the
Mann-Whitney probability that an adversarial example scores above a clean one, ties counted
one half: 0.5 is chance, 1 a perfect detector.

Everything here is pure: numpy arrays or tensors in, floats or numpy arrays out.
"""
from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from advlab.errors import InputError

ArrayLike = Tensor | np.ndarray | list[float]


def _scores(s: ArrayLike, name: str) -> np.ndarray:
    a = s.detach().cpu().double().numpy() if isinstance(s, Tensor) else np.asarray(s, float)
    a = a.reshape(-1)
    if a.size == 0:
        raise InputError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise InputError(f"{name} holds NaN or Inf scores")
    return a


def calibrate_threshold(clean_scores: ArrayLike, fpr: float = 0.05) -> float:
    """The threshold at which at most ``fpr`` of the clean scores lie strictly above it.

    With n clean scores sorted in decreasing order, the threshold is the (k+1)-th largest,
    k = floor(fpr * n): at most k clean inputs score above it (fewer when scores tie).

    Args:
        clean_scores: scores of clean inputs (N,).
        fpr: allowed false-positive rate, in [0, 1).
    """
    if not 0.0 <= fpr < 1.0:
        raise InputError(f"fpr must lie in [0, 1), got {fpr}")
    s = np.sort(_scores(clean_scores, "clean scores"))[::-1]
    k = math.floor(fpr * len(s) + 1e-9)
    return float(s[k])


def tpr_fpr(clean_scores: ArrayLike, adv_scores: ArrayLike,
            threshold: float) -> tuple[float, float]:
    """(TP rate, FP rate) of the rule "score > threshold": the fraction of adversarial inputs
    detected and the fraction of clean inputs detected."""
    c, a = _scores(clean_scores, "clean scores"), _scores(adv_scores, "adversarial scores")
    return float((a > threshold).mean()), float((c > threshold).mean())


def tpr_at_fpr(clean_scores: ArrayLike, adv_scores: ArrayLike,
               fpr: float = 0.05) -> tuple[float, float, float]:
    """Detection rate at a threshold calibrated on the clean scores.

    Returns:
        (TP rate, achieved FP rate <= fpr, threshold).
    """
    t = calibrate_threshold(clean_scores, fpr)
    tp, fp = tpr_fpr(clean_scores, adv_scores, t)
    return tp, fp, t


def roc_curve(clean_scores: ArrayLike,
              adv_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of "score >= threshold", adversarial inputs as positives.

    Returns:
        (fpr, tpr, thresholds): one point per distinct score in decreasing order, preceded by
        (0, 0) at threshold +inf, as ``sklearn.metrics.roc_curve(drop_intermediate=False)``.
    """
    c, a = _scores(clean_scores, "clean scores"), _scores(adv_scores, "adversarial scores")
    s = np.concatenate([a, c])
    pos = np.concatenate([np.ones(len(a)), np.zeros(len(c))])
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tps, fps = np.cumsum(pos)[last], np.cumsum(1 - pos)[last]
    return (np.r_[0.0, fps / len(c)], np.r_[0.0, tps / len(a)], np.r_[np.inf, s[last]])


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return ((upper - counts + 1 + upper) / 2.0)[inverse]


def roc_auc(clean_scores: ArrayLike, adv_scores: ArrayLike) -> float:
    r"""Area under the ROC curve by the Mann-Whitney statistic,
    :math:`AUC = P(s_{adv} > s_{clean}) + \tfrac12 P(s_{adv} = s_{clean})`
    (equal to the trapezoid area under :func:`roc_curve`)."""
    c, a = _scores(clean_scores, "clean scores"), _scores(adv_scores, "adversarial scores")
    ranks = _average_ranks(np.concatenate([a, c]))
    u = ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2.0
    return float(u / (len(a) * len(c)))


def trapezoid_auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoid area under a curve given by increasing fpr."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
