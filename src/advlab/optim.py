r"""One minibatch fit and one per-row Adam: every trainer and every attack-time optimiser.

- :func:`fit` trains a model (or a list of tensors) on n examples: per epoch a permutation
  from a seeded ``torch.Generator`` split into mini-batches (or the full batch), a learning-
  rate schedule, Adam or SGD, progress hooks and resumable checkpoints. The zoo, adversarial
  training, distillation, MagNet's autoencoder, the learned detectors, the substitute
  networks and AutoZOOM's autoencoder all train through it.
- :class:`RowAdam` is Adam (Kingma & Ba) whose moments and step counts are kept per row (or
  per entry) of the variable, so rows can leave the batch, restart or step on a few
  coordinates only: C&W, ZOO and AutoZOOM optimise their perturbations with it,

.. math::  m \leftarrow \beta_1 m + (1 - \beta_1) g,\quad
           v \leftarrow \beta_2 v + (1 - \beta_2) g^2,\quad
           w \leftarrow w - \eta\, \frac{m / (1 - \beta_1^t)}{\sqrt{v / (1 - \beta_2^t)}
           + \epsilon}.

References: Kingma & Ba, "Adam: a method for stochastic optimization", ICLR 2015,
arXiv:1412.6980.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from advlab import io
from advlab.errors import InputError, ModelFileError

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- schedules


def _constant(step: int, steps: int) -> float:
    return 1.0


def _cyclic(step: int, steps: int) -> float:
    t = step / steps
    return t / 0.4 if t < 0.4 else max(0.0, (1.0 - t) / 0.6)


def _cosine(step: int, steps: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / steps))


def _step(step: int, steps: int) -> float:
    t = step / steps
    return 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01


#: learning-rate factor of step ``step`` of ``steps``: "constant"; "cyclic" (linear up over the
#: first 40%, then down to 0, Wong et al.'s one-cycle); "cosine" (from 1 to 0); "step" (x0.1 at
#: 50% and 75% of the run)
SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": _constant, "cyclic": _cyclic, "cosine": _cosine, "step": _step,
}
OPTIMIZERS = ("adam", "sgd")

# ----------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class Step:
    """One mini-batch of :func:`fit`.

    Attributes:
        idx: the example indices of the batch (on the generator's device).
        epoch: the epoch, from 0.
        batch: the batch within the epoch, from 0.
        batches: batches per epoch.
        step: the global step, from 0.
        steps: steps of the whole run.
        lr: the learning rate of this step.
    """

    idx: Tensor
    epoch: int
    batch: int
    batches: int
    step: int
    steps: int
    lr: float


@dataclass(frozen=True)
class Epoch:
    """A finished epoch of :func:`fit`: ``epoch`` from 1, the mean loss per example, the wall
    time, and its last :class:`Step`."""

    epoch: int
    epochs: int
    loss: float
    seconds: float
    last: Step


#: ``loss(step) -> scalar`` to minimise on the batch ``step.idx``
BatchLoss = Callable[[Step], Tensor]


class Resumable(Protocol):
    """Caller state saved with a checkpoint (e.g. the best weights and the history)."""

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]: ...

    def restore(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None: ...


@dataclass
class Checkpoint:
    """Resumable training: after every epoch :func:`fit` writes one safetensors file (weights,
    optimizer state, both random states, ``extra``'s state), atomically; a run started again
    with the same ``ident`` resumes after the last finished epoch.

    Attributes:
        path: the checkpoint file.
        ident: JSON facts that must match to resume (method, settings, data fingerprint).
        extra: more state to save and restore.
    """

    path: Path
    ident: dict[str, Any]
    extra: Resumable | None = field(default=None)


def make_optimizer(params: Iterable[Tensor], kind: str, lr: float,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam, or SGD with momentum 0.9 (Nesterov off); ``weight_decay`` is an L2 penalty."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")


def fit(target: nn.Module | Sequence[Tensor], loss: BatchLoss, n: int, *, epochs: int,
        lr: float, batch_size: int | None = None, generator: torch.Generator | None = None,
        optimizer: str | torch.optim.Optimizer = "adam", weight_decay: float = 0.0,
        schedule: str = "constant", global_seed: int | None = None,
        on_batch: Callable[[Step, float, float], None] | None = None,
        on_epoch: Callable[[Epoch], bool | None] | None = None,
        checkpoint: Checkpoint | None = None, name: str = "fit") -> torch.optim.Optimizer:
    """Minimise ``loss`` over mini-batches of n examples, in place.

    Each epoch draws a permutation of range(n) from ``generator`` (on its device) and splits
    it into batches of ``batch_size`` (None: the full batch in order, no draw). A model is put
    in train mode for each epoch and returned in eval mode; the parameters' ``.grad`` are
    None afterwards. Anything drawn from the global RNG inside (dropout) happens in a fork,
    seeded with ``global_seed`` when given: the caller's global RNG is untouched.

    Args:
        target: a model (its parameters are trained) or the tensors to train.
        loss: ``loss(step)``, the mean loss of the batch ``step.idx``.
        n: the number of examples.
        epochs: passes over the examples.
        lr: the peak learning rate.
        batch_size: examples per step; None for full-batch steps.
        generator: the shuffling (required with ``batch_size``).
        optimizer: "adam", "sgd", or an optimizer to go on with (warm start; its state kept).
        weight_decay: L2 penalty of a named optimizer.
        schedule: a name from :data:`SCHEDULES`.
        global_seed: seeds the global RNG inside the fork (reproducible dropout).
        on_batch: called after every step with the step, the epoch's running mean loss and
            its seconds so far.
        on_epoch: called after every epoch; returning True stops the run.
        checkpoint: resumable checkpoints (see :class:`Checkpoint`).
        name: how the log names the run.

    Returns:
        The optimizer (pass it back as ``optimizer`` to continue training).
    """
    model = target if isinstance(target, nn.Module) else None
    params = list(target.parameters()) if model is not None else list(target)
    if epochs < 0 or lr <= 0 or (batch_size is not None and batch_size < 1) or n < 1:
        raise InputError(f"need epochs >= 0, lr > 0, batch_size >= 1, n >= 1; got epochs="
                         f"{epochs}, lr={lr}, batch_size={batch_size}, n={n}")
    if schedule not in SCHEDULES:
        raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if batch_size is not None and generator is None:
        raise InputError("mini-batches need a seeded generator")
    opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else \
        make_optimizer(params, optimizer, lr, weight_decay)
    device = params[0].device if params else torch.device("cpu")
    batches = 1 if batch_size is None else math.ceil(n / batch_size)
    steps = max(1, epochs * batches)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch.enable_grad():
        if global_seed is not None:
            torch.manual_seed(global_seed)
        start = 0
        if checkpoint is not None and checkpoint.path.exists():
            start = _resume(checkpoint, model, params, opt, generator)
        for epoch in range(start, epochs):
            t0, total, seen = time.perf_counter(), 0.0, 0
            if model is not None:
                model.train()
            for b, idx in enumerate(_batches(n, batch_size, generator, device)):
                step = epoch * batches + b
                now = lr * SCHEDULES[schedule](step, steps)
                for group in opt.param_groups:
                    group["lr"] = now
                s = Step(idx, epoch, b, batches, step, steps, now)
                value = loss(s)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                total += value.item() * len(idx)
                seen += len(idx)
                if on_batch is not None:
                    on_batch(s, total / seen, time.perf_counter() - t0)
            done = Epoch(epoch + 1, epochs, total / n, time.perf_counter() - t0, s)
            log.debug("%s epoch %d/%d: loss %.4f (%.1f s)", name, epoch + 1, epochs, done.loss,
                      done.seconds)
            stop = bool(on_epoch(done)) if on_epoch is not None else False
            if checkpoint is not None:
                _save(checkpoint, model, params, opt, generator, epoch + 1)
            if stop:
                break
    opt.zero_grad(set_to_none=True)
    if model is not None:
        model.eval()
    return opt


def _batches(n: int, batch_size: int | None, generator: torch.Generator | None,
             device: torch.device) -> Sequence[Tensor]:
    if batch_size is None:
        return [torch.arange(n, device=device)]
    assert generator is not None
    return torch.randperm(n, generator=generator, device=generator.device).split(batch_size)


def _weights(model: nn.Module | None, params: list[Tensor]) -> dict[str, Tensor]:
    if model is not None:
        return dict(model.state_dict())
    return {str(i): p for i, p in enumerate(params)}


def _save(ck: Checkpoint, model: nn.Module | None, params: list[Tensor],
          opt: torch.optim.Optimizer, gen: torch.Generator | None, epochs_done: int) -> None:
    tensors = {f"model.{k}": v for k, v in _weights(model, params).items()}
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    tensors["global_rng"] = torch.get_rng_state()
    if gen is not None:
        tensors["rng"] = gen.get_state()
    extra: dict[str, Any] = {}
    if ck.extra is not None:
        more, extra = ck.extra.state()
        tensors.update({f"extra.{k}": v for k, v in more.items()})
    io.write_checkpoint(ck.path, tensors, {**ck.ident, "epochs_done": epochs_done,
                                           "optimizer": opt_meta, "extra": extra})


def _resume(ck: Checkpoint, model: nn.Module | None, params: list[Tensor],
            opt: torch.optim.Optimizer, gen: torch.Generator | None) -> int:
    tensors, state = io.read_checkpoint(ck.path)
    for key, want in ck.ident.items():
        if state.get(key) != want:
            raise ModelFileError(
                f"checkpoint {ck.path} was written by another run ({key}: {state.get(key)!r} "
                f"!= {want!r}); delete it or choose another checkpoint directory")
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    if model is not None:
        model.load_state_dict(weights)
    else:
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(weights[str(i)])
    _restore_optimizer(opt, tensors, state["optimizer"])
    torch.set_rng_state(tensors["global_rng"])
    if gen is not None:
        gen.set_state(tensors["rng"])
    if ck.extra is not None:
        ck.extra.restore({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")},
                         state["extra"])
    log.info("resuming from %s after epoch %d", ck.path, state["epochs_done"])
    return int(state["epochs_done"])


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {f"optim.{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items()
               if isinstance(v, Tensor)}
    scalars = {f"{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items()
               if not isinstance(v, Tensor)}
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor],
                       meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    for k, v in meta["scalars"].items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ----------------------------------------------------------------------------- per-row Adam


@dataclass
class RowAdam:
    """Adam with its moments and step counts kept per row of the variable (``per_entry``:
    per entry), so that any subset of rows (or entries) steps, leaves or restarts on its own.

    ``step(w, g, idx)`` updates the state at ``idx`` (rows, or any index of the variable,
    e.g. ``(rows, coords)`` or ``(rows, slice, slice(0, h))``) and returns the new values of
    ``w``, the variable at ``idx``.

    Attributes:
        m, v: the moments, shaped like the variable.
        t: steps taken, one per row (N x 1 x ...) or per entry.
        lr: the step size; ``b1``, ``b2``, ``eps``: Adam's constants.
    """

    m: Tensor
    v: Tensor
    t: Tensor
    lr: float
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    @classmethod
    def like(cls, w: Tensor, lr: float, *, per_entry: bool = False, b1: float = 0.9,
             b2: float = 0.999) -> RowAdam:
        """Fresh state for a variable shaped like ``w`` (first dimension: rows)."""
        shape = w.shape if per_entry else (len(w),) + (1,) * (w.dim() - 1)
        t = torch.zeros(shape, dtype=torch.float64, device=w.device)
        return cls(torch.zeros_like(w), torch.zeros_like(w), t, lr, b1, b2)

    def step(self, w: Tensor, g: Tensor, idx: Any) -> Tensor:
        """One Adam step of the entries ``idx`` (``w`` and ``g`` hold just those)."""
        t = self.t[idx] + 1
        self.t[idx] = t
        m = self.m[idx].mul_(self.b1).add_(g, alpha=1 - self.b1)
        v = self.v[idx].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        self.m[idx], self.v[idx] = m, v
        mhat = m / (1 - self.b1 ** t).to(m.dtype)
        vhat = v / (1 - self.b2 ** t).to(v.dtype)
        return w - self.lr * mhat / (vhat.sqrt() + self.eps)

    def reset(self, rows: Tensor) -> None:
        """Forget the state of ``rows`` (a bool mask or indices): they start afresh."""
        self.m[rows], self.v[rows], self.t[rows] = 0, 0, 0
