r"""What every detector shares: fit on one model, score, calibrate a threshold, detect.

A :class:`Detector` answers "is this input adversarial?" for the model it was fitted on.
``score(x)`` returns one number per input, higher meaning more adversarial;
``threshold(x_clean, fpr)`` picks the score above which an input is flagged so that at most
a fraction ``fpr`` of clean inputs are; ``detect(x)`` applies it. The lecture's two rates:

.. math::  TP = \frac{\#\,AEs\ detected}{\#\,AEs} \to 1, \qquad
           FP = \frac{\#\,noAEs\ detected}{\#\,noAEs} \to 0

(see :mod:`advlab.detectors.roc`).

A detector remembers the model it was fitted on (the object and a fingerprint of its
parameters and buffers): scoring with another model, or after the model's weights changed,
raises :class:`~advlab.errors.NotFittedError`. Detectors never change the model: activations
are read with forward hooks that are removed after each pass, nothing calls ``backward()`` or
switches the mode, and randomness comes only from a generator seeded with ``seed``.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from advlab import io
from advlab.detectors.roc import calibrate_threshold
from advlab.errors import AttackError, InputError, NotFittedError, UnknownNameError
from advlab.validation import check_eval_mode, check_images, check_labels, check_logits

log = logging.getLogger(__name__)

Model = Callable[[Tensor], Tensor]


def fingerprint(model: Model) -> str:
    """A digest of a module's parameters and buffers (:func:`advlab.io.fingerprint_model`).

    Two modules with the same weights share a fingerprint; any change of a weight or buffer
    changes it. A plain callable (not an ``nn.Module``) is identified by its id.
    """
    if not isinstance(model, nn.Module):
        return f"callable:{id(model)}"
    return io.fingerprint_model(model)


def resolve_layer(model: Model, name: str) -> nn.Module:
    """The submodule of ``model`` called ``name`` (dotted path), or a clear error."""
    if not isinstance(model, nn.Module):
        raise InputError("reading activations needs an nn.Module model")
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise UnknownNameError("layer", name, names) from None


def parametric_layers(model: Model) -> list[str]:
    """Names of the modules that hold parameters directly (Linear, Conv, ...), in order."""
    if not isinstance(model, nn.Module):
        raise InputError("reading activations needs an nn.Module model")
    return [n for n, m in model.named_modules()
            if n and any(True for _ in m.parameters(recurse=False))]


def forward_with_activations(model: Model, x: Tensor,
                             layers: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward pass of ``model`` on ``x`` that also returns the outputs of ``layers``.

    The hooks are removed when the pass ends (even on error). Gradients flow through the
    returned activations when grad mode is on, so differentiable scores can use them.

    Args:
        model: an nn.Module classifier.
        x: inputs N x C x H x W.
        layers: submodule names (``model.get_submodule`` paths); each must run exactly once.

    Returns:
        (logits N x K, {layer: activations N x D flattened}).
    """
    store: dict[str, list[Tensor]] = {name: [] for name in layers}
    handles = []
    try:
        for name in layers:
            module = resolve_layer(model, name)
            handles.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: store[name].append(out)))
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    for name, outs in store.items():
        if len(outs) != 1:
            raise InputError(
                f"layer {name!r} ran {len(outs)} times in one forward pass; name a module that "
                "runs exactly once (e.g. a separate nn.ReLU per layer)")
    return logits, {name: outs[0].flatten(1) for name, outs in store.items()}


def collect_activations(model: Model, x: Tensor, layers: list[str],
                        batch_size: int = 500) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`forward_with_activations` over batches, without gradients.

    Returns:
        (logits N x K, {layer: activations N x D}), detached.
    """
    logits, acts = [], {name: [] for name in layers}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out, a = forward_with_activations(model, x[i:i + batch_size], layers)
            logits.append(out)
            for name in layers:
                acts[name].append(a[name])
    return torch.cat(logits), {name: torch.cat(v) for name, v in acts.items()}


def euclidean(a: Tensor, b: Tensor) -> Tensor:
    r"""Pairwise Euclidean distances between the rows of a (N x D) and b (M x D), N x M, by
    the expansion :math:`\|a\|^2 - 2\,a \cdot b + \|b\|^2`: the rounding of
    ``torch.cdist``'s matrix-product mode, without an N x D copy. Differentiable, with a zero
    gradient at distance 0 (as ``torch.cdist``). Its time against ``torch.cdist`` at the
    detectors' sizes: ``python benchmarks/kernels.py --sections euclidean``, figures in
    benchmarks/results/kernels-euclidean.json."""
    norm2 = [torch.linalg.vector_norm(t, dim=1).square() for t in (a, b)]  # no N x D copy
    sq = norm2[0][:, None] - 2 * (a @ b.T) + norm2[1]
    pos = sq > 0
    return torch.where(pos, sq.where(pos, 1.0).sqrt(), 0.0)


def batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    """Apply ``fn`` to consecutive batches of ``x`` and concatenate the results (dim 0)."""
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


class Detector:
    """Base class of detectors: ``fit``, ``score``, ``threshold``, ``detect``.

    Subclasses implement :meth:`_fit` (learn from clean data, and adversarial data when
    ``supervised``) and :meth:`_score` (one batch, no gradients). Those with a differentiable
    score (or a smooth surrogate of it) implement :meth:`_score_torch`, used by adaptive
    attacks (:mod:`advlab.detectors.adaptive`).

    Args:
        batch_size: inputs per forward pass when scoring.
        seed: seeds every random choice of the detector (sampling, splits, initialisation).

    Attributes (after fit):
        model_: the model the detector was fitted on.
        threshold_: the calibrated threshold (after :meth:`threshold`), else None.
        num_classes_: K.
    """

    supervised: ClassVar[bool] = False  # fit needs adversarial examples (x_adv)
    differentiable: ClassVar[bool] = False  # score_torch is available

    def __init__(self, *, batch_size: int = 500, seed: int = 0) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.seed = batch_size, seed
        self.model_: Model | None = None
        self.threshold_: float | None = None
        self._fingerprint: str | None = None
        self._input_shape: tuple[int, ...] | None = None
        self.num_classes_: int | None = None

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None = None) -> Detector:
        """Fit the detector on ``model`` with clean data (x, y).

        Args:
            model: the classifier to protect (eval mode), x in [0, 1] -> logits.
            x: clean training images N x C x H x W in [0, 1].
            y: their true labels, int64 (N,).
            x_adv: adversarial images for supervised detectors (those that learn a
                classifier of clean vs adversarial); when None they craft their own with
                their ``attack``. Unsupervised detectors refuse it.

        Returns:
            self, fitted.
        """
        check_images(x)
        check_eval_mode(model)
        with torch.no_grad():
            logits = model(x[: self.batch_size])
        check_logits(logits, min(len(x), self.batch_size))
        check_labels(y, len(x), logits.shape[1])
        if x_adv is not None:
            if not self.supervised:
                raise InputError(f"{type(self).__name__} is unsupervised: fit takes no x_adv")
            check_images(x_adv, "x_adv")
            if x_adv.shape[1:] != x.shape[1:]:
                raise InputError(f"x_adv has shape {tuple(x_adv.shape)}, x {tuple(x.shape)}")
        self.model_, self.num_classes_ = model, logits.shape[1]
        self._input_shape = tuple(x.shape[1:])
        self.threshold_ = None
        self._fit(model, x.detach(), y.to(x.device), None if x_adv is None else x_adv.detach())
        self._fingerprint = fingerprint(model)
        log.debug("%s fitted on %d examples", type(self).__name__, len(x))
        return self

    def _fit(self, model: Model, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
        raise NotImplementedError

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator seeded with ``self.seed`` (same seed, same choices)."""
        return torch.Generator(device=device).manual_seed(self.seed)

    # -- checks -----------------------------------------------------------------------------

    def check_model(self, model: Model | None = None) -> Model:
        """The fitted model, after checking the detector is fitted, that ``model`` (if given)
        is the one it was fitted on, and that the fitted model's weights did not change."""
        if self.model_ is None or self._fingerprint is None:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit(model, x, y) first")
        if model is not None and model is not self.model_ and \
                fingerprint(model) != self._fingerprint:
            raise NotFittedError(
                f"{type(self).__name__} was fitted on another model; fit it on this one "
                "(activation statistics do not carry over between models)")
        if fingerprint(self.model_) != self._fingerprint:
            raise NotFittedError(
                f"the model's weights changed since {type(self).__name__} was fitted; fit again")
        return self.model_

    def check_inputs(self, x: Tensor, name: str = "x") -> None:
        """x must be valid images of the shape the detector was fitted on."""
        check_images(x, name)
        if tuple(x.shape[1:]) != self._input_shape:
            raise InputError(
                f"{name} has shape {tuple(x.shape)}, but {type(self).__name__} was fitted on "
                f"inputs of shape N x {' x '.join(map(str, self._input_shape or ()))}")

    # -- scoring ----------------------------------------------------------------------------

    def score(self, x: Tensor, model: Model | None = None) -> Tensor:
        """Adversarial score of each input, higher = more adversarial.

        Args:
            x: images N x C x H x W in [0, 1], shaped like the fitting data.
            model: optional; if given it must be the model the detector was fitted on.

        Returns:
            float tensor (N,) on x's device, detached.
        """
        fitted = self.check_model(model)
        self.check_inputs(x)
        gen = self.generator(x.device)
        with torch.no_grad():
            s = batched(lambda b: self._score(fitted, b, gen), x.detach(), self.batch_size)
        return s.detach()

    def _score(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def score_torch(self, x: Tensor, model: Model | None = None) -> Tensor:
        """The score (or a smooth surrogate of it) as a differentiable function of x, for
        adaptive attacks. Gradients flow to x only; the model's parameters get no ``.grad``
        as long as the caller uses ``torch.autograd.grad(..., x)``.

        Returns:
            (N,) tensor attached to the graph of x.
        """
        if not self.differentiable:
            raise AttackError(f"{type(self).__name__} has no differentiable score")
        fitted = self.check_model(model)
        self.check_inputs(x)
        return self._score_torch(fitted, x, self.generator(x.device))

    def _score_torch(self, model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    # -- threshold and decision -------------------------------------------------------------

    def threshold(self, x_clean: Tensor, fpr: float = 0.05) -> float:
        """Calibrate and store the threshold: at most ``fpr`` of ``x_clean`` score above it.

        Args:
            x_clean: clean images (not those the detector was fitted on, for an honest rate).
            fpr: the false-positive rate to allow, in [0, 1).

        Returns:
            the threshold (also stored as ``threshold_``).
        """
        self.threshold_ = calibrate_threshold(self.score(x_clean), fpr)
        return self.threshold_

    def calibrated(self, x_clean: Tensor, fpr: float = 0.05) -> Detector:
        """A copy of this fitted detector with its threshold calibrated on ``x_clean``
        (:meth:`threshold`); the fitted state is shared, and this detector is untouched (a
        detector shared by several evaluations, each with its own clean images).

        Args:
            x_clean: clean images.
            fpr: the false-positive rate to allow, in [0, 1).
        """
        other = copy.copy(self)
        other.threshold(x_clean, fpr)
        return other

    def detect(self, x: Tensor, model: Model | None = None) -> Tensor:
        """bool (N,): score above the calibrated threshold (call :meth:`threshold` first)."""
        if self.threshold_ is None:
            raise NotFittedError(
                f"{type(self).__name__} has no threshold: call threshold(x_clean, fpr) first")
        return self.score(x, model) > self.threshold_

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                           if not k.startswith("_") and not k.endswith("_"))
        return f"{type(self).__name__}({fields})"
