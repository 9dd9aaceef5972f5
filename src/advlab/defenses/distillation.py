r"""Defensive distillation (Papernot et al. 2016).

With the softmax at temperature T,

.. math::  y_{soft}(x)_i = \frac{e^{Z_i(x)/T}}{\sum_{c=1}^{M} e^{Z_c(x)/T}},

1. a *teacher* with the model's architecture is trained on the hard labels with the softmax
   at temperature T;
2. its soft labels :math:`y_{soft}(x)` (at the same T) label the training set;
3. a *student*, the same architecture freshly initialised, is trained on the soft labels,
   again at temperature T;
4. the student is deployed at T = 1: its logits are used as they are.

Trained at T, the student's logits grow about T times larger than a normal network's, so at
T = 1 its softmax saturates: the gradient of the cross-entropy or of the softmax outputs
vanishes (in float32 it is often exactly zero), and FGSM or JSMA computed on the softmax
fail. The decision function is unchanged, so attacks on the logits (Carlini & Wagner's
margin loss, or any attack on :math:`Z/T`) still succeed with perturbations as small as on
the undistilled model: distillation masks gradients, it does not make the model robust
(Carlini & Wagner 2017, arXiv:1608.04644; Carlini & Wagner 2016, arXiv:1607.04311).

References:
    Papernot, McDaniel, Wu, Jha & Swami, "Distillation as a defense to adversarial
    perturbations against deep neural networks", IEEE S&P 2016, arXiv:1511.04508.
    Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network", arXiv:1503.02531.
"""
from __future__ import annotations

import copy
import functools
import logging
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import data, zoo
from advlab.errors import InputError
from advlab.validation import check_images, check_labels

log = logging.getLogger(__name__)


class Distilled(NamedTuple):
    """The two networks of defensive distillation (a tuple: ``teacher, student = ...``).

    Attributes:
        teacher: trained on hard labels at temperature T (its logits are Z, as trained).
        student: trained on the teacher's soft labels at T, deployed at T = 1.
    """

    teacher: nn.Module
    student: nn.Module


def soft_labels(model: nn.Module, x: Tensor, temperature: float,
                batch_size: int = 1000) -> Tensor:
    r"""The softmax of ``model``'s logits at temperature T, :math:`\mathrm{softmax}(Z(x)/T)`.

    Shape:
        x: N x C x H x W -> N x K (rows sum to 1).
    """
    device = next((p.device for p in model.parameters()), x.device)
    with torch.no_grad():
        return torch.cat([F.softmax(model(x[i:i + batch_size].to(device)) / temperature, 1)
                          for i in range(0, len(x), batch_size)]).cpu()


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """A fresh copy of ``model``'s architecture: a deepcopy with every Linear / Conv layer
    re-initialised from ``seed`` (:func:`advlab.zoo.init_weights`) and normalisation layers
    reset. The model passed in is not changed.

    Raises:
        InputError: a layer with parameters that advlab does not know how to re-initialise.
    """
    fresh = copy.deepcopy(model)
    zoo.init_weights(fresh, torch.Generator().manual_seed(seed))
    known = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    for name, m in fresh.named_modules():
        own = list(m.parameters(recurse=False))
        if isinstance(m, known) or not own:
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
            continue
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            m.reset_parameters()  # deterministic: ones and zeros
        else:
            raise InputError(f"cannot re-initialise layer {name!r} ({type(m).__name__}); "
                             "pass student= with a freshly initialised model")
    return fresh


def _temperature_ce(temperature: float):  # noqa: ANN202
    def loss(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        logp = F.log_softmax(model(xb) / temperature, dim=1)
        if yb.dtype == torch.int64:
            return F.nll_loss(logp, yb)
        return -(yb * logp).sum(1).mean()  # soft labels
    return loss


def distill(model: nn.Module, x: Tensor, y: Tensor, temperature: float = 100.0, *,
            epochs: int = 10, student_epochs: int | None = None, lr: float = 1e-3,
            batch_size: int = 64, seed: int = 0, teacher: nn.Module | None = None,
            student: nn.Module | None = None) -> Distilled:
    """Defensive distillation at temperature T; the model passed in is not changed.

    Args:
        model: gives the architecture (teacher and student are re-initialised copies).
        x, y: training images in [0, 1] and int64 labels.
        temperature: T (Papernot et al. use 100 on MNIST; T = 1 is plain distillation).
        epochs: teacher training epochs (Adam, ``lr``, ``batch_size``).
        student_epochs: student epochs (default ``epochs``).
        lr, batch_size: optimiser settings of both trainings.
        seed: seeds both initialisations and the shuffling.
        teacher: an already trained teacher (trained at T!) to skip step 1.
        student: an untrained student network to use instead of a re-initialised copy.

    Returns:
        :class:`Distilled` (teacher, student), both in eval mode; the student is the
        deployed model (T = 1: its plain logits).

    Shape:
        x: N x C x H x W; y: (N,).

    References:
        Papernot et al., IEEE S&P 2016, arXiv:1511.04508.
    """
    check_images(x)
    check_labels(y, len(x))
    if not temperature > 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    loss = _temperature_ce(temperature)
    if teacher is not None:
        teacher = copy.deepcopy(teacher)  # the caller's teacher is not changed
    else:
        teacher = reinitialise(model, seed)
        log.info("distillation: training the teacher at T=%g", temperature)
        zoo.train(teacher, x, y, epochs, lr, batch_size, seed, loss_fn=loss)
    soft = soft_labels(teacher.eval(), x, temperature)
    net = reinitialise(model, seed + 1) if student is None else copy.deepcopy(student)
    log.info("distillation: training the student on soft labels at T=%g", temperature)
    zoo.train(net, x, soft, student_epochs or epochs, lr, batch_size, seed + 1, loss_fn=loss)
    return Distilled(teacher.eval(), net.eval())


#: distilled models that ``advlab.zoo.load(name)`` trains once and caches: the student of
#: :func:`distill` on the base model's training split (bump "version" on any change)
DISTILLED: dict[str, dict[str, Any]] = {
    "mnist-mlp-distilled": {"base": "mnist-mlp", "version": 1,
                            "kwargs": {"temperature": 100.0, "epochs": 20, "lr": 0.002}},
}


def _train_distilled(name: str) -> tuple[nn.Module, dict[str, Any]]:
    recipe = DISTILLED[name]
    base = zoo.load(recipe["base"])
    x, y = data.load(zoo.training_settings(recipe["base"]).dataset, "train")
    log.info("training distilled model %s (first use; cached at %s)", name, zoo.cache_path(name))
    student = distill(base, x, y, **recipe["kwargs"]).student
    return student, {"clean_accuracy": zoo.accuracy(student, *data.load(
        zoo.training_settings(recipe["base"]).dataset, "test"))}


for _name, _recipe in DISTILLED.items():
    zoo.register(_name, zoo.Derived(
        _recipe["base"], {"distilled": _name, "version": _recipe["version"],
                          "recipe": _recipe["kwargs"]},
        functools.partial(_train_distilled, _name),
        f"{_recipe['base']} distilled at T={_recipe['kwargs']['temperature']:g}"))
