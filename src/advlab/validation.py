"""Checks on what users hand to advlab, each raising a clear :mod:`advlab.errors` error.

Every public entry point (attacks, detectors, defenses, evaluation) calls these instead of
trusting its inputs, so a bad input is never a silent wrong answer.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advlab.errors import InputError, LabelError, ModelModeError, ModelOutputError


def check_images(x: Tensor, name: str = "x") -> None:
    """x must be a floating tensor N x C x H x W, finite, with values in [0, 1]."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}")
    if x.dim() != 4:
        raise InputError(f"{name} must have shape N x C x H x W, got {tuple(x.shape)}")
    if len(x) == 0:
        raise InputError(f"{name} is an empty batch")
    lo, hi = (v.item() for v in x.aminmax())  # one pass; NaN propagates into min and max
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{name} holds NaN or Inf values")
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{name} must lie in [0, 1] (pixel space; put normalisation inside the model with "
            f"advlab.zoo.Normalize), got values in [{lo:.4g}, {hi:.4g}]")


def check_labels(y: Tensor, n: int, num_classes: int | None = None, name: str = "y") -> None:
    """y must be int64 of shape (N,), with values in [0, num_classes)."""
    if not isinstance(y, Tensor):
        raise LabelError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype != torch.int64:
        raise LabelError(f"{name} must be int64 class indices (not one-hot), got dtype {y.dtype}")
    if y.shape != (n,):
        raise LabelError(f"{name} must have shape ({n},) to match the batch, got {tuple(y.shape)}")
    if num_classes is not None:
        check_classes(y, num_classes, name)


def check_classes(labels: Tensor, num_classes: int, name: str = "y") -> None:
    """Class indices must lie in [0, num_classes)."""
    if labels.numel() == 0:
        return
    lo, hi = (v.item() for v in labels.aminmax())  # one pass
    if lo < 0 or hi >= num_classes:
        raise LabelError(f"{name} must lie in [0, {num_classes}), got values in [{lo}, {hi}]")


def check_target(target: Tensor, y: Tensor, num_classes: int | None = None) -> None:
    """A target must be a label different from the true label of each example (and inside
    [0, num_classes) when that is known)."""
    check_labels(target, len(y), num_classes, name="target")
    same = target == y.to(target.device)
    if same.any():
        raise LabelError(
            f"target equals the true label for {int(same.sum())} example(s) "
            f"(first at index {int(same.nonzero()[0])}); a targeted attack needs t != y")


def check_logits(logits: Tensor, n: int) -> None:
    """Model outputs must be finite logits of shape N x K, K >= 2, not probabilities."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ModelOutputError(f"the model must return logits of shape ({n}, K), got {shape}")
    if logits.shape[1] < 2:
        raise ModelOutputError(f"the model must return at least 2 classes, got {logits.shape[1]}")
    lo, hi = (v.item() for v in logits.detach().aminmax())  # one pass; NaN propagates
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ModelOutputError("the model returned NaN or Inf logits")
    if lo >= 0 and hi <= 1 and torch.allclose(logits.detach().sum(1),
                                               torch.ones_like(logits[:, 0]), atol=1e-4):
        raise ModelOutputError(
            "the model seems to return probabilities (rows in [0, 1] summing to 1); advlab "
            "needs logits: remove the final softmax")


_MODE_FREE = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Linear, nn.Conv1d, nn.Conv2d,
              nn.Conv3d, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Sigmoid, nn.Tanh,
              nn.Softplus, nn.Flatten, nn.Unflatten, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
              nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Softmax, nn.LogSoftmax)


def check_eval_mode(model: object) -> None:
    """A model in train mode would change its BatchNorm statistics and use dropout while
    attacked; advlab refuses it instead of silently switching it to eval mode.

    Modules whose behaviour does not depend on the mode (containers, linear and conv layers,
    activations, pooling) may be left in train mode; any other module in train mode
    (BatchNorm, dropout, or a user-defined module that might read ``self.training``) is refused.
    """
    if not isinstance(model, nn.Module):
        return
    for name, m in model.named_modules():
        if m.training and type(m) not in _MODE_FREE:
            raise ModelModeError(
                f"the model is in train mode (module {name or type(m).__name__!r}: dropout and "
                "BatchNorm statistics would change while it is attacked); call model.eval() "
                "first")
