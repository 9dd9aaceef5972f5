r"""Adversarial training: the lecture's loop, Madry PGD training, TRADES and fast FGSM training.

Every function trains a *copy* of the model (``copy.deepcopy``; the model passed in is never
changed) and returns it in eval mode.

- :func:`lecture_training`, the lecture's recipe: (1) train on D; (2) craft adversarial
  examples of D with every attack the adversary may use, keeping their TRUE labels, into
  :math:`D^{adv}`; (3) train on :math:`D' = D \cup D^{adv}`; (4) optionally iterate.
- :func:`madry_training`: min-max training, fresh PGD examples for every mini-batch,
  :math:`\min_\theta \mathbb{E}\,\max_{\|\delta\|_\infty \le \epsilon}
  L(f_\theta(x + \delta), y)` (Madry et al. 2018, arXiv:1706.06083).
- :func:`trades_training`: :math:`L(f(x), y) + \beta\, \max_{x'} \mathrm{KL}(f(x) \,\|\,
  f(x'))` (Zhang et al. 2019, arXiv:1901.08573).
- :func:`fast_training`: one FGSM step of size :math:`\alpha = 1.25\epsilon` from a uniformly
  random start (Wong, Rice & Kolter 2020, arXiv:2001.03994).
- :func:`adversarial_training` dispatches on ``method``.

The shared loop (:class:`FitSettings`) adds what long runs need: an eps ramp, learning-rate
schedules, data augmentation with :mod:`advlab.transforms`, early stopping on robust accuracy
of a held-out set (against robust overfitting, Rice, Wong & Kolter 2020, arXiv:2002.11569),
progress through :mod:`logging` and an optional callback, and resumable checkpoints: after
every epoch one safetensors file (weights, optimizer state, random state, best weights) and a
JSON summary, each written atomically. Adversarial examples are crafted with the copy in eval
mode (attacks refuse train-mode models) and the update is made in train mode.
"""
from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import data, io, optim, zoo
from advlab.attacks.base import Attack
from advlab.attacks.gradient import PGD
from advlab.errors import InputError, LabelError, UnknownNameError
from advlab.threat import LinfBall, project_box
from advlab.transforms import Transform
from advlab.validation import check_images, check_labels

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- settings


@dataclass
class TrainingProgress:
    """What the progress callback receives after every mini-batch and every epoch.

    Attributes:
        epoch: the current epoch, from 1.
        epochs: the number of epochs.
        batch: the mini-batch just done, from 1 (equal to ``batches`` at the end of an epoch).
        batches: mini-batches per epoch.
        loss: the mean training loss of the epoch so far.
        eps: the attack radius used for this batch (after the ramp).
        lr: the learning rate used for this batch.
        seconds: wall time of the epoch so far.
        end_of_epoch: True for the per-epoch report (``metrics`` then filled).
        metrics: held-out clean / robust accuracy at the end of an epoch, when measured.
    """

    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float
    eps: float
    lr: float
    seconds: float
    end_of_epoch: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


ProgressFn = Callable[[TrainingProgress], None]


@dataclass
class FitSettings:
    """How the copy is trained (shared by every adversarial-training method).

    Attributes:
        epochs: passes over the training data.
        lr: peak learning rate.
        batch_size: examples per step.
        optimizer: "adam" or "sgd" (momentum 0.9, Nesterov off).
        weight_decay: L2 penalty of the optimizer.
        lr_schedule: "constant", "cyclic" (linear up to ``lr`` over the first 40% of the
            steps, then down to 0: Wong et al.'s one-cycle), "cosine", or "step" (x0.1 at
            50% and 75% of the run).
        eps_ramp: epochs over which the training eps grows linearly from 0 to eps (0: none).
        augment: an :class:`advlab.transforms.Transform` applied to each clean batch before
            crafting (e.g. ``Translate(max_shift=2)``), drawing from the training generator.
        seed: seeds shuffling, augmentation and the attacks' random starts.
        x_val, y_val: a held-out set; when given, clean and robust accuracy are measured after
            every epoch and the weights of the best robust accuracy are returned (early
            stopping against robust overfitting).
        val_attack: the attack for held-out robust accuracy (default PGD-10 at the training
            eps, 1 restart).
        patience: stop when robust held-out accuracy has not improved for this many epochs
            (None: train all epochs, still returning the best weights).
        checkpoint: a directory for resumable checkpoints (None: none). A run started again
            with the same settings and data resumes after the last finished epoch.
        progress: called with a :class:`TrainingProgress` after every batch and epoch.
    """

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    eps_ramp: float = 0.0
    augment: Transform | None = None
    seed: int = 0
    x_val: Tensor | None = None
    y_val: Tensor | None = None
    val_attack: Attack | None = None
    patience: int | None = None
    checkpoint: str | Path | None = None
    progress: ProgressFn | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise InputError(f"need epochs >= 0, lr > 0, batch_size >= 1; got {self.epochs}, "
                             f"{self.lr}, {self.batch_size}")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.lr_schedule not in optim.SCHEDULES:
            raise InputError(f"lr_schedule must be one of {', '.join(optim.SCHEDULES)}, got "
                             f"{self.lr_schedule!r}")
        if self.eps_ramp < 0:
            raise InputError(f"eps_ramp must be >= 0 epochs, got {self.eps_ramp}")
        if (self.x_val is None) != (self.y_val is None):
            raise InputError("give both x_val and y_val, or neither")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that must match for a checkpoint to be resumed."""
        keep = ("lr", "batch_size", "optimizer", "weight_decay", "lr_schedule", "eps_ramp",
                "seed")
        d = {k: v for k, v in asdict(self).items() if k in keep}
        d["augment"] = repr(self.augment)
        return d


#: ``loss(model, xb, yb, eps, generator) -> scalar``; called with the model in train mode; it
#: may switch the model to eval mode to craft examples and must switch it back.
BatchLoss = Callable[[nn.Module, Tensor, Tensor, float, torch.Generator], Tensor]

# ----------------------------------------------------------------------------- the loop


def _device(model: nn.Module, x: Tensor) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return x.device


def _check_data(x: Tensor, y: Tensor) -> None:
    check_images(x)
    if not isinstance(y, Tensor):
        raise LabelError(f"y must be a torch.Tensor, got {type(y).__name__}")
    check_labels(y, len(x))


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, device: torch.device,
              batch_size: int = 500) -> float:
    correct = 0
    for i in range(0, len(x), batch_size):
        pred = model(x[i:i + batch_size].to(device)).argmax(1)
        correct += int((pred == y[i:i + batch_size].to(device)).sum())
    return correct / len(x)


def _robust_accuracy(model: nn.Module, attack: Attack, x: Tensor, y: Tensor,
                     device: torch.device, batch_size: int = 500) -> float:
    correct = 0
    for i in range(0, len(x), batch_size):
        res = attack(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
        correct += int((~res.success).sum())
    return correct / len(x)


class _Tracker:
    """Per-epoch bookkeeping of :func:`fit`: held-out metrics, the history, the best weights
    and early stopping; saved with each checkpoint."""

    def __init__(self, model: nn.Module, s: FitSettings, val_attack: Attack,
                 device: torch.device, method: str, ramp: Callable[[optim.Step], float]) -> None:
        self.model, self.s, self.val_attack, self.device = model, s, val_attack, device
        self.method, self.ramp = method, ramp
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"robust": -1.0, "epoch": 0, "weights": None}

    def epoch(self, e: optim.Epoch) -> bool:
        """Measure, record, keep the best weights; True to stop early."""
        s, model = self.s, self.model
        model.eval()
        metrics = _epoch_metrics(model, s, self.val_attack, self.device)
        eps = self.ramp(e.last)
        record = {"epoch": e.epoch, "loss": e.loss, "eps": eps, "seconds": round(e.seconds, 2),
                  **metrics}
        self.history.append(record)
        log.info("%s epoch %d/%d: loss %.4f, eps %.3f%s (%.1f s)", self.method, e.epoch,
                 e.epochs, e.loss, eps, "".join(f", {k} {v:.4f}" for k, v in metrics.items()),
                 record["seconds"])
        if "val_robust" in metrics and metrics["val_robust"] > self.best["robust"]:
            self.best.update(robust=metrics["val_robust"], epoch=e.epoch,
                             weights={k: v.detach().clone() for k, v in model.state_dict().items()})
        if s.progress is not None:
            s.progress(TrainingProgress(e.epoch, e.epochs, e.last.batches, e.last.batches, e.loss,
                                        eps, e.last.lr, record["seconds"], True, metrics))
        stop = s.patience is not None and "val_robust" in metrics and \
            e.epoch - self.best["epoch"] >= s.patience
        if stop:
            log.info("%s: early stop after epoch %d (best robust %.4f at epoch %d)", self.method,
                     e.epoch, self.best["robust"], self.best["epoch"])
        return stop

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        weights = self.best["weights"] or {}
        return ({f"best.{k}": v for k, v in weights.items()},
                {"history": self.history, "best_robust": self.best["robust"],
                 "best_epoch": self.best["epoch"]})

    def restore(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        self.history = list(meta["history"])
        if meta["best_epoch"]:
            self.best.update(robust=meta["best_robust"], epoch=meta["best_epoch"],
                             weights={k[5:]: v for k, v in tensors.items()
                                      if k.startswith("best.")})


def fit(model: nn.Module, x: Tensor, y: Tensor, loss: BatchLoss, eps: float,
        settings: FitSettings, method: str) -> nn.Module:
    """Train ``model`` IN PLACE with ``loss`` per mini-batch (the public functions pass a copy),
    through :func:`advlab.optim.fit`.

    Args:
        model: the model to train (changed).
        x, y: training images in [0, 1] and int64 labels.
        loss: the per-batch objective (see :data:`BatchLoss`).
        eps: the final training radius (ramped by ``settings.eps_ramp``).
        settings: the shared loop settings.
        method: a name recorded in checkpoints and logs.

    Returns:
        ``model`` in eval mode: the last weights, or the best held-out robust ones.
    """
    s = settings
    device = _device(model, x)
    gen = torch.Generator().manual_seed(s.seed)

    def ramp(step: optim.Step) -> float:
        return eps * min(1.0, (step.step + 1) / (s.eps_ramp * step.batches)) if s.eps_ramp \
            else eps

    def batch(step: optim.Step) -> Tensor:
        xb, yb = x[step.idx].to(device), y[step.idx].to(device)
        if s.augment is not None:
            xb = s.augment(xb, gen)
        return loss(model, xb, yb, ramp(step), gen)

    def progress(step: optim.Step, running: float, seconds: float) -> None:
        if s.progress is not None:
            s.progress(TrainingProgress(step.epoch + 1, s.epochs, step.batch + 1, step.batches,
                                        running, ramp(step), step.lr, seconds))

    tracker = _Tracker(model, s, s.val_attack or PGD(eps, steps=10, seed=s.seed + 1), device,
                       method, ramp)
    ckpt = None
    if s.checkpoint is not None:
        ident = {"method": method, "eps": eps, "settings": s.fingerprint(),
                 "data": f"{io.fingerprint_data(x, y)}:{io.fingerprint_architecture(model)}"}
        ckpt = optim.Checkpoint(Path(s.checkpoint) / "checkpoint.safetensors", ident, tracker)
    optim.fit(model, batch, len(x), epochs=s.epochs, lr=s.lr, batch_size=s.batch_size,
              generator=gen, optimizer=s.optimizer, weight_decay=s.weight_decay,
              schedule=s.lr_schedule, global_seed=s.seed, on_batch=progress,
              on_epoch=tracker.epoch, checkpoint=ckpt, name=method)
    best = tracker.best
    if best["weights"] is not None:
        log.info("%s: returning the weights of epoch %d (held-out robust accuracy %.4f)",
                 method, best["epoch"], best["robust"])
        model.load_state_dict(best["weights"])
    model.train_history = tracker.history  # type: ignore[assignment]
    return model.eval()


def _epoch_metrics(model: nn.Module, s: FitSettings, val_attack: Attack,
                   device: torch.device) -> dict[str, float]:
    if s.x_val is None or s.y_val is None:
        return {}
    return {"val_clean": _accuracy(model, s.x_val, s.y_val, device),
            "val_robust": _robust_accuracy(model, val_attack, s.x_val, s.y_val, device)}


def _prepare(model: nn.Module, x: Tensor, y: Tensor,
             fit_kwargs: dict[str, Any]) -> tuple[nn.Module, FitSettings]:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_data(x, y)
    settings = FitSettings(**fit_kwargs)
    if settings.x_val is not None and settings.y_val is not None:
        _check_data(settings.x_val, settings.y_val)
    return copy.deepcopy(model), settings


# ----------------------------------------------------------------------------- the methods


def _crafting(model: nn.Module) -> _EvalMode:
    return _EvalMode(model)


class _EvalMode:
    """``with _EvalMode(model):`` eval mode inside (attacks refuse train mode), train after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train()


def _seeded(attack: Attack, seed: int) -> Attack:
    """A copy of the attack with another seed (fresh random starts every batch)."""
    return attack.replace(seed=seed)


def madry_training(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | None = None, *,
                   eps: float | None = None, steps: int = 10, clean_weight: float = 0.0,
                   **fit_kwargs: Any) -> nn.Module:
    r"""Madry et al.'s PGD adversarial training: every mini-batch is replaced by (or mixed
    with) adversarial examples crafted on the fly against the current weights,

    .. math::  \min_\theta \frac{1}{|B|}\sum_{(x, y) \in B} (1 - w)\,
       L(f_\theta(x^{adv}), y) + w\, L(f_\theta(x), y), \qquad
       x^{adv} = \mathrm{PGD}_\epsilon(f_\theta, x, y).

    Args:
        model: the model to defend (not changed; a trained copy is returned).
        x, y: training images in [0, 1] (N x C x H x W) and int64 labels (N,).
        attack: any bounded advlab attack (its eps is the training eps, ramped by
            ``eps_ramp``); default PGD with ``steps`` steps, step 2.5 eps / steps, random
            start, no early stop.
        eps: the training radius when ``attack`` is None (default 0.3); with an attack, its
            own eps unless given.
        steps: PGD steps of the default attack.
        clean_weight: w, the weight of the clean loss (0: adversarial examples only;
            0.5: Goodfellow et al.'s mixture).
        **fit_kwargs: the loop settings, see :class:`FitSettings` (epochs, lr, checkpoint,
            progress, x_val / y_val, ...).

    Returns:
        The trained copy, in eval mode; its ``train_history`` lists per-epoch numbers.

    References:
        Madry et al., "Towards deep learning models resistant to adversarial attacks",
        ICLR 2018, arXiv:1706.06083.
    """
    net, s = _prepare(model, x, y, fit_kwargs)
    if attack is None:
        eps = 0.3 if eps is None else eps
        attack = PGD(eps, steps=steps, random_start=True, early_stop=False, seed=s.seed)
    elif eps is None:
        if not isinstance(attack.eps, (int, float)):
            raise InputError("give eps= for an attack without a float eps")
        eps = float(attack.eps)

    def loss(m: nn.Module, xb: Tensor, yb: Tensor, e: float, g: torch.Generator) -> Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=g))  # fresh starts every batch
        with _crafting(m):
            x_adv = _seeded(attack, seed)(m, xb, yb, eps=e).x_adv
        adv = F.cross_entropy(m(x_adv), yb)
        if clean_weight == 0.0:
            return adv
        return (1 - clean_weight) * adv + clean_weight * F.cross_entropy(m(xb), yb)

    return fit(net, x, y, loss, eps, s, "madry")


def trades_adversary(model: nn.Module, x: Tensor, eps: float, steps: int, alpha: float,
                     generator: torch.Generator) -> Tensor:
    r"""TRADES' inner maximisation: :math:`\max_{\|x'-x\|_\infty\le\epsilon}
    \mathrm{KL}(f(x) \,\|\, f(x'))` by sign-gradient ascent from :math:`x + 0.001\,
    \mathcal{N}(0, I)`.

    Shape:
        x: N x C x H x W -> N x C x H x W (detached).
    """
    ball = LinfBall()
    e = torch.full((len(x),), eps, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    x_adv = project_box(x, x + 0.001 * noise, e, ball)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_nat, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = project_box(x, x_adv.detach() + alpha * grad.sign(), e, ball)
    return x_adv.detach()


def trades_training(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 0.3,
                    beta: float = 6.0, steps: int = 10, alpha: float | None = None,
                    **fit_kwargs: Any) -> nn.Module:
    r"""TRADES: trade natural accuracy against robustness with a KL regulariser,

    .. math::  \min_\theta\ L(f_\theta(x), y) + \beta \max_{\|x' - x\|_\infty \le \epsilon}
       \mathrm{KL}\big(f_\theta(x) \,\|\, f_\theta(x')\big)

    (softmax outputs f; the inner maximum by :func:`trades_adversary`).

    Args:
        model: the model to defend (not changed; a trained copy is returned).
        x, y: training images and labels.
        eps: the training radius (Linf).
        beta: weight of the robustness term (6 in the paper; larger: more robust, less
            accurate).
        steps: steps of the inner maximisation.
        alpha: its step size (default 2.5 eps / steps; the paper uses 0.01 for 40 steps
            at eps 0.3 on MNIST).
        **fit_kwargs: the loop settings, see :class:`FitSettings`.

    Returns:
        The trained copy, in eval mode.

    References:
        Zhang et al., "Theoretically principled trade-off between robustness and accuracy",
        ICML 2019, arXiv:1901.08573.
    """
    net, s = _prepare(model, x, y, fit_kwargs)
    if beta < 0 or steps < 1:
        raise InputError(f"need beta >= 0 and steps >= 1, got {beta}, {steps}")

    def loss(m: nn.Module, xb: Tensor, yb: Tensor, e: float, g: torch.Generator) -> Tensor:
        a = alpha if alpha is not None else 2.5 * e / steps
        with _crafting(m):
            x_adv = trades_adversary(m, xb, e, steps, a, g)
        logits = m(xb)
        robust = F.kl_div(F.log_softmax(m(x_adv), dim=1), F.softmax(logits, dim=1),
                          reduction="batchmean")
        return F.cross_entropy(logits, yb) + beta * robust

    return fit(net, x, y, loss, eps, s, "trades")


def fast_training(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 0.3,
                  alpha: float | None = None, **fit_kwargs: Any) -> nn.Module:
    r"""Fast adversarial training: FGSM from a random start,

    .. math::  \delta_0 \sim U[-\epsilon, \epsilon]^d,\quad
       \delta = \Pi_\epsilon\big(\delta_0 + \alpha\,\mathrm{sign}\,\nabla_\delta
       L(f(x + \delta_0), y)\big),\quad \alpha = 1.25\,\epsilon

    then a step on :math:`L(f(\mathrm{clip}(x + \delta)), y)`. Use it with
    ``lr_schedule="cyclic"`` (the paper's one-cycle schedule).

    Args:
        model: the model to defend (not changed; a trained copy is returned).
        x, y: training images and labels.
        eps: the training radius (Linf).
        alpha: the FGSM step (default 1.25 eps).
        **fit_kwargs: the loop settings, see :class:`FitSettings`.

    Returns:
        The trained copy, in eval mode.

    References:
        Wong, Rice & Kolter, "Fast is better than free: revisiting adversarial training",
        ICLR 2020, arXiv:2001.03994.
    """
    net, s = _prepare(model, x, y, fit_kwargs)
    ball = LinfBall()

    def loss(m: nn.Module, xb: Tensor, yb: Tensor, e: float, g: torch.Generator) -> Tensor:
        a = 1.25 * e if alpha is None else alpha
        radius = torch.full((len(xb),), e, dtype=xb.dtype, device=xb.device)
        with _crafting(m):
            x0 = project_box(xb, xb + ball.random(xb.cpu(), radius.cpu(), g).to(xb.device),
                             radius, ball).requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(m(x0), yb), x0)
            x_adv = project_box(xb, x0.detach() + a * grad.sign(), radius, ball)
        return F.cross_entropy(m(x_adv), yb)

    return fit(net, x, y, loss, eps, s, "fast")


def _craft_all(model: nn.Module, attack: Attack, x: Tensor, y: Tensor,
               batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Adversarial examples of all of x (model in eval mode), and their success flags."""
    device = _device(model, x)
    outs, succ = [], []
    for i in range(0, len(x), batch_size):
        res = attack(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
        outs.append(res.x_adv.cpu())
        succ.append(res.success.cpu())
    return torch.cat(outs), torch.cat(succ)


def _cross_entropy(m: nn.Module, xb: Tensor, yb: Tensor, e: float,
                   g: torch.Generator) -> Tensor:
    return F.cross_entropy(m(xb), yb)


def lecture_training(model: nn.Module, x: Tensor, y: Tensor, attacks: Attack | Sequence[Attack],
                     *, rounds: int = 1, pretrain_epochs: int | None = 0,
                     only_successful: bool = False, **fit_kwargs: Any) -> nn.Module:
    r"""The lecture's adversarial training loop.

    1. train the network on D (``pretrain_epochs``; 0 when the model is already trained);
    2. craft adversarial examples of D with every attack the adversary may use, and put them
       in :math:`D^{adv}` with their TRUE labels;
    3. train on :math:`D' = D \cup D^{adv}` (``epochs`` of :class:`FitSettings`);
    4. (optional) iterate: ``rounds`` times, :math:`D^{adv}` growing each round with examples
       crafted against the current weights.

    Args:
        model: the model to defend (not changed; a trained copy is returned).
        x, y: D, images in [0, 1] and int64 labels.
        attacks: one attack or a list of attacks (each crafts one adversarial copy of D).
        rounds: how many times steps 2-3 run.
        pretrain_epochs: epochs of step 1 (None: the same as ``epochs``).
        only_successful: keep only the adversarial examples that fooled the model.
        **fit_kwargs: the loop settings, see :class:`FitSettings`; a ``checkpoint`` directory
            gets one sub-directory per stage.

    Returns:
        The trained copy, in eval mode.

    References:
        Goodfellow, Shlens & Szegedy, "Explaining and harnessing adversarial examples",
        ICLR 2015, arXiv:1412.6572; Kurakin, Goodfellow & Bengio, "Adversarial machine
        learning at scale", ICLR 2017, arXiv:1611.01236.
    """
    net, s = _prepare(model, x, y, fit_kwargs)
    atks = [attacks] if isinstance(attacks, Attack) else list(attacks)
    if not atks or not all(isinstance(a, Attack) for a in atks):
        raise InputError("attacks must be an advlab Attack or a non-empty list of them")
    if rounds < 1:
        raise InputError(f"rounds must be >= 1, got {rounds}")
    pre = s.epochs if pretrain_epochs is None else pretrain_epochs

    def stage(name: str, epochs: int) -> FitSettings:
        ckpt = None if s.checkpoint is None else Path(s.checkpoint) / name
        return FitSettings(**{**{k: getattr(s, k) for k in s.__dataclass_fields__},
                               "epochs": epochs, "checkpoint": ckpt})

    if pre:
        fit(net, x, y, _cross_entropy, 0.0, stage("pretrain", pre), "lecture-pretrain")
    x_all, y_all = x.cpu(), y.cpu()
    for r in range(rounds):
        net.eval()
        for a in atks:
            x_adv, success = _craft_all(net, a, x, y)
            keep = success if only_successful else torch.ones_like(success)
            log.info("lecture round %d: %s fooled %.3f of D; adding %d examples", r + 1,
                     type(a).__name__, success.float().mean().item(), int(keep.sum()))
            x_all = torch.cat([x_all, x_adv[keep]])
            y_all = torch.cat([y_all, y.cpu()[keep]])
        fit(net, x_all, y_all, _cross_entropy, 0.0, stage(f"round{r + 1}", s.epochs),
            f"lecture-round{r + 1}")
    return net.eval()


METHODS = ("madry", "trades", "fast", "lecture")


def adversarial_training(model: nn.Module, x: Tensor, y: Tensor,
                         attack: Attack | Sequence[Attack] | None = None, *,
                         method: str = "madry", **kwargs: Any) -> nn.Module:
    """Adversarial training by name; the model passed in is not changed.

    Args:
        model: the model to defend.
        x, y: training images in [0, 1] and int64 labels.
        attack: the attack (Madry; default PGD-10 at eps 0.3) or the list of attacks
            (lecture loop). TRADES and fast training craft their own examples; give them
            ``eps=`` (an attack given to them sets eps from its own).
        method: "madry", "trades", "fast" or "lecture".
        **kwargs: the method's arguments and :class:`FitSettings` (epochs, lr, ...).

    Returns:
        The trained copy, in eval mode.

    Example:
        ``robust = advlab.defenses.adversarial_training(model, x_tr, y_tr, attack=atk,
        epochs=5)``
    """
    if method == "madry":
        if attack is not None and not isinstance(attack, Attack):
            raise InputError("Madry training takes one attack")
        return madry_training(model, x, y, attack, **kwargs)
    if method in ("trades", "fast"):
        if isinstance(attack, Attack) and isinstance(attack.eps, (int, float)):
            kwargs.setdefault("eps", float(attack.eps))
        fn = trades_training if method == "trades" else fast_training
        return fn(model, x, y, **kwargs)
    if method == "lecture":
        if attack is None:
            raise InputError("the lecture loop needs attack= (one attack or a list)")
        return lecture_training(model, x, y, attack, **kwargs)
    raise UnknownNameError("adversarial training method", method, list(METHODS))


# ----------------------------------------------------------------------------- cached models

#: robust models that :func:`load_robust` trains once and caches, like the zoo models
ROBUST: dict[str, dict[str, Any]] = {
    "mnist-cnn-trades": {
        "base": "mnist-cnn", "dataset": "mnist5k", "method": "trades", "version": 1,
        "kwargs": {"eps": 0.3, "beta": 6.0, "steps": 10, "epochs": 30, "eps_ramp": 10.0,
                   "lr": 1e-3, "lr_schedule": "step", "seed": 0},
        "augment_shift": 2,
    },
}


def _train_robust(name: str) -> tuple[nn.Module, dict[str, Any]]:
    from advlab.transforms import Translate

    recipe = ROBUST[name]
    x, y = data.load(recipe["dataset"], "train")
    log.info("training robust model %s (first use; cached at %s)", name, zoo.cache_path(name))
    fn = {"trades": trades_training, "madry": madry_training, "fast": fast_training}
    robust = fn[recipe["method"]](
        zoo.build(recipe["base"], seed=recipe["kwargs"]["seed"]), x, y,
        augment=Translate(max_shift=recipe["augment_shift"]),
        checkpoint=data.home() / "checkpoints" / name, **recipe["kwargs"])
    return robust, {"history": robust.train_history}


for _name, _recipe in ROBUST.items():
    zoo.register(_name, zoo.Derived(
        _recipe["base"], {"robust": _name, "version": _recipe["version"]},
        functools.partial(_train_robust, _name),
        f"{_recipe['base']} trained with {_recipe['method']} at eps {_recipe['kwargs']['eps']}"))


def load_robust(name: str = "mnist-cnn-trades", *, train_if_missing: bool = True) -> nn.Module:
    """An adversarially trained model, ``advlab.zoo.load(name)``: from
    ``$ADVLAB_HOME/models/<name>.safetensors`` or trained now (resumable: checkpoints under
    ``$ADVLAB_HOME/checkpoints/<name>``) and cached.

    ``mnist-cnn-trades``: mnist-cnn trained with TRADES (beta 6, 10 steps) at eps 0.3 on
    mnist5k-train, eps ramped over 10 of 30 epochs, random 2-pixel translations, learning
    rate x0.1 at 50% and 75% of the run: the costliest model here, each epoch running 10
    attack steps a batch (``python benchmarks/defenses_repro.py timing`` compares the
    defenses' epochs with a plain one).

    Args:
        name: a key of :data:`ROBUST`.
        train_if_missing: train when no usable cache file exists; if False, raise.

    Returns:
        The model in eval mode.

    Raises:
        UnknownNameError: an unknown name.
        ModelFileError: no usable cache file and ``train_if_missing`` is False.
    """
    if name not in ROBUST:
        raise UnknownNameError("robust model", name, list(ROBUST))
    return zoo.load(name, train_if_missing=train_if_missing)
