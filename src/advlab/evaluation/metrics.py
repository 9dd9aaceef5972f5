r"""What an evaluation measures: accuracy under attack, success, norms, similarity, transfer,
fragility, query curves and detection ROC.

Definitions (N examples, true labels y, clean predictions :math:`\hat y`, predictions on the
adversarial examples :math:`\hat y'`):

- clean accuracy :math:`\frac1N\sum[\hat y_i = y_i]`;
- robust accuracy :math:`\frac1N\sum[\hat y'_i = y_i]` (an example counts as robust only when
  the model is right on it after the attack; a clean mistake is never robust);
- success rate: the fraction of the examples the model got right that the attack fooled,
  :math:`\sum[\hat y_i = y_i \wedge s_i] / \sum[\hat y_i = y_i]`, with :math:`s_i` the attack's
  own success (``pred != y`` untargeted, ``pred == target`` targeted);
- the four properties of adversarial examples from the lecture: high-confidence wrong
  predictions (:func:`wrong_confidence`), transferability (:func:`transfer_rate`), visual
  similarity (norms and :func:`ssim`), fragility under small transformations
  (:func:`revert_rate` with :func:`translate` / :func:`gaussian_noise`).

Everything works on CPU tensors or numpy arrays of per-example values, so the report can
recompute it from the results database alone.

The ROC/AUC functions here are a small local implementation; :mod:`advlab.detectors` may
provide its own, and the two agree (the AUC is the Mann-Whitney statistic, ties counted 1/2).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.detectors.roc import (  # noqa: F401  (re-exported)
    calibrate_threshold,
    roc_auc,
    roc_curve,
    trapezoid_auc,
)
from advlab.errors import InputError
from advlab.threat import clip_box

# ----------------------------------------------------------------------------- accuracy


def _arr(v: Tensor | np.ndarray | list) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)


def _mean(mask: np.ndarray) -> float:
    """Mean of a boolean mask; NaN for an empty one (no examples: nothing to claim)."""
    return float(mask.mean()) if mask.size else float("nan")


def accuracy(pred: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Fraction of predictions equal to the labels. Shape: pred, y (N,)."""
    return _mean(_arr(pred) == _arr(y))


def robust_accuracy(adv_pred: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Accuracy on the adversarial examples: fraction with adv_pred == y. Shape (N,)."""
    return accuracy(adv_pred, y)


def success_rate(success: Tensor | np.ndarray, clean_pred: Tensor | np.ndarray,
                 y: Tensor | np.ndarray) -> float:
    """Fraction of the correctly classified examples on which the attack succeeded.

    Args:
        success: bool (N,), the attack's re-checked success.
        clean_pred, y: clean predictions and true labels (N,).

    Returns:
        A rate in [0, 1]; NaN when the model gets no example right.
    """
    ok = _arr(clean_pred) == _arr(y)
    return _mean(_arr(success).astype(bool)[ok])


def median_norms(norms: dict[str, Tensor | np.ndarray],
                 mask: Tensor | np.ndarray | None = None) -> dict[str, float]:
    """Median of each perturbation norm over the examples in ``mask`` (default: all).

    NaN for an empty selection.
    """
    out = {}
    for name, v in norms.items():
        a = _arr(v).astype(np.float64)
        if mask is not None:
            a = a[_arr(mask).astype(bool)]
        out[name] = float(np.median(a)) if a.size else float("nan")
    return out


# ----------------------------------------------------------------------------- the four properties


def wrong_confidence(adv_conf: Tensor | np.ndarray, adv_pred: Tensor | np.ndarray,
                     y: Tensor | np.ndarray) -> float:
    """Mean softmax confidence of the wrong predictions on adversarial examples.

    The lecture's first property: adversarial examples typically induce high-confidence
    wrong predictions (cat 96% -> dog 92%). NaN when no prediction is wrong.
    """
    wrong = _arr(adv_pred) != _arr(y)
    c = _arr(adv_conf).astype(np.float64)[wrong]
    return float(c.mean()) if c.size else float("nan")


def transfer_rate(source_success: Tensor | np.ndarray, target_clean_pred: Tensor | np.ndarray,
                  target_adv_pred: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Fraction of adversarial examples crafted on a source model that also fool a target.

    Counted over the examples where the attack fooled the source and the target classifies
    the clean image correctly, so a target's own clean mistakes are not credited to transfer.

    Returns:
        A rate in [0, 1]; NaN when no example qualifies.

    References: Szegedy et al., "Intriguing properties of neural networks", ICLR 2014,
    arXiv:1312.6199; Papernot et al., "Transferability in machine learning",
    arXiv:1605.07277.
    """
    y = _arr(y)
    keep = _arr(source_success).astype(bool) & (_arr(target_clean_pred) == y)
    return _mean(_arr(target_adv_pred)[keep] != y[keep])


def revert_rate(probe_adv_pred: Tensor | np.ndarray, success: Tensor | np.ndarray,
                y: Tensor | np.ndarray) -> float:
    """Fraction of successful adversarial examples that a small transformation turns back
    into the true class (the lecture's "extreme fragility"). NaN without successes."""
    s = _arr(success).astype(bool)
    return _mean(_arr(probe_adv_pred)[s] == _arr(y)[s])


def translate(x: Tensor, dx: int, dy: int = 0) -> Tensor:
    """Shift images right by ``dx`` and down by ``dy`` pixels (cyclic, torch.roll).
    Shape N x C x H x W.

    On MNIST-like images with an empty border the wrap-around only moves background.
    """
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def gaussian_noise(x: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """x plus N(0, sigma^2) noise drawn from ``generator``, clipped to [0, 1]."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return clip_box(x + sigma * noise)


def ssim(x: Tensor, x_adv: Tensor, window: int = 7, data_range: float = 1.0) -> Tensor:
    r"""Structural similarity per example, 1 for identical images.

    Local means, variances and covariance over a uniform ``window`` x ``window`` window
    (sample covariance), combined as

    .. math:: \mathrm{SSIM} = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
              {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
              \quad C_1 = (0.01 L)^2,\ C_2 = (0.03 L)^2

    and averaged over the valid positions and channels (scikit-image's defaults).

    Args:
        x, x_adv: images N x C x H x W with H, W >= window.
        window: odd side of the window.
        data_range: L, the dynamic range of the pixels.

    Returns:
        (N,) SSIM values.

    References: Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error
    visibility to structural similarity", IEEE TIP 2004.
    """
    if x.shape != x_adv.shape or x.dim() != 4:
        raise InputError(f"ssim needs two N x C x H x W tensors of one shape, got "
                         f"{tuple(x.shape)} and {tuple(x_adv.shape)}")
    if min(x.shape[2:]) < window:
        raise InputError(f"ssim window {window} is larger than the images {tuple(x.shape[2:])}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    a, b = x.to(dtype), x_adv.to(dtype)

    def filt(t: Tensor) -> Tensor:  # the local mean over the window, valid positions only
        return F.avg_pool2d(t, window, stride=1)

    npix = window * window
    cov_norm = npix / (npix - 1)
    mx, my = filt(a), filt(b)
    vx = cov_norm * (filt(a * a) - mx * mx)
    vy = cov_norm * (filt(b * b) - my * my)
    vxy = cov_norm * (filt(a * b) - mx * my)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).to(x.dtype)


# ----------------------------------------------------------------------------- black-box


def success_vs_queries(queries: Tensor | np.ndarray, success: Tensor | np.ndarray,
                       budgets: Tensor | np.ndarray | list[int]) -> np.ndarray:
    """Success rate within each query budget: fraction of examples fooled with <= q queries.

    Args:
        queries: per-example query counts (N,).
        success: bool (N,).
        budgets: query budgets (B,).

    Returns:
        (B,) rates in [0, 1].
    """
    q, s = _arr(queries), _arr(success).astype(bool)
    if q.size == 0:
        return np.full(len(budgets), np.nan)
    return np.array([float((s & (q <= b)).mean()) for b in _arr(budgets)])


def accuracy_vs_norm(norms: Tensor | np.ndarray, success: Tensor | np.ndarray,
                     clean_pred: Tensor | np.ndarray, y: Tensor | np.ndarray,
                     eps: Tensor | np.ndarray | list[float]) -> np.ndarray:
    """Robust accuracy at each radius for a minimum-norm attack: an example is robust at eps
    when the model is right on it and the attack needed more than eps (or failed).

    Returns:
        (E,) accuracies.
    """
    ok = _arr(clean_pred) == _arr(y)
    fooled = _arr(success).astype(bool)
    n = _arr(norms).astype(np.float64)
    return np.array([_mean(ok & ~(fooled & (n <= e))) for e in _arr(eps)])


# ----------------------------------------------------------------------------- detection ROC
# roc_curve and roc_auc are the detectors' (advlab.detectors.roc), imported above.


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a curve by the trapezoid rule (fpr increasing)."""
    return trapezoid_auc(fpr, tpr)


def detection_at_fpr(clean_scores: Tensor | np.ndarray, adv_scores: Tensor | np.ndarray,
                     fooled: Tensor | np.ndarray, fpr: float = 0.05) -> tuple[float, float]:
    r"""The lecture's detection rate and what gets through, at a threshold :math:`\tau` that
    flags at most ``fpr`` of the clean inputs (:func:`calibrate_threshold`, score > tau).

    Args:
        clean_scores: detector scores of the clean inputs (N,), the negatives.
        adv_scores: scores of the adversarial inputs (M,), one per attacked input.
        fooled: bool (M,), the attack succeeded on that input.
        fpr: the false-positive rate allowed.

    Returns:
        (TP rate: fooled inputs flagged / fooled inputs, NaN when none is fooled;
        evasion rate: inputs both fooled and not flagged / attacked inputs).
    """
    t = calibrate_threshold(clean_scores, fpr)
    flagged = _arr(adv_scores) > t
    f = _arr(fooled).astype(bool)
    return _mean(flagged[f]), _mean(f & ~flagged)


def tpr_at_fpr(negatives: Tensor | np.ndarray, positives: Tensor | np.ndarray,
               fpr: float = 0.05) -> float:
    """Detection rate (TP) at the largest threshold whose false-positive rate is <= fpr."""
    f, t, _ = roc_curve(negatives, positives)
    return float(t[f <= fpr + 1e-12].max())
