"""What every attack shares: the call contract, the result, and the registry with taxonomy.

An :class:`Attack` holds settings only; the model comes at call time. ``attack(model, x, y)``
validates everything, calls the subclass's :meth:`Attack.perturb`, puts the output back into
the threat model (eps-ball and pixel box), and re-checks success with one forward pass of the
model on the returned images, so ``success`` is never a claim the images do not back.

The model's output is checked (logits, not probabilities; labels in range) on the attack's own
first forward pass (:class:`Checked`), and the norms of the result are computed when first
read, so a one-step attack pays little beyond its forward-backward and the success check.
"""
from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advlab.attacks.settings import Configured, declare
from advlab.errors import AttackError, ThreatModelError, UnknownNameError
from advlab.threat import Ball, all_norms, as_eps, ball, clip_box, project_box
from advlab.validation import (
    check_classes,
    check_eval_mode,
    check_graph,
    check_images,
    check_kwargs,
    check_labels,
    check_logits,
    check_target,
)

log = logging.getLogger(__name__)

Model = Callable[[Tensor], Tensor]

#: rows on which :meth:`Attack.__call__` checks the output of the model behind an oracle
PROBE_ROWS = 8


@dataclass(frozen=True)
class Taxonomy:
    """Where an attack sits in the lecture's taxonomy.

    Attributes:
        knowledge: "white" (gradients), "score" (output scores only) or "label" (top-1 only).
        goal: "untargeted", "targeted" or "both".
        norm: the perturbation norm ("linf", "l2", "l1", "l0", "patch", ...).
        kind: "one-shot", "iterative" or "optimization".
        bounded: True when the output is confined to an eps-ball; False for minimum-norm attacks.
    """

    knowledge: str
    goal: str
    norm: str
    kind: str
    bounded: bool = True


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes:
        x_adv: adversarial images, same shape, dtype and device as x, in [0, 1].
        success: bool (N,), re-checked on x_adv: prediction != y (untargeted) or == target.
        norms: {"l0", "l1", "l2", "linf"} -> (N,) norms of x_adv - x.
        queries: int64 (N,) model queries per example for black-box attacks, None for white-box.
        target: the targets used, int64 (N,), or None for an untargeted attack.
        logits: the model's logits on x_adv, N x K (detached).
        info: attack-specific extras (for instance the constant c found by a binary search).
    """

    x_adv: Tensor
    success: Tensor
    norms: Mapping[str, Tensor]
    queries: Tensor | None = None
    target: Tensor | None = None
    logits: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return self.success.float().mean().item()


class Norms(Mapping[str, Tensor]):
    """The L0, L1, L2 and Linf norms of each row of x_adv - x, computed on first read (most
    callers never read them). Changing x or x_adv in place before that read is an error, not
    a silent wrong answer."""

    def __init__(self, x_adv: Tensor, x: Tensor) -> None:
        self._pair: tuple[Tensor, Tensor] | None = (x_adv, x)
        self._versions = (x_adv._version, x._version)
        self._norms: dict[str, Tensor] = {}

    def _computed(self) -> dict[str, Tensor]:
        if self._pair is not None:
            x_adv, x = self._pair
            if (x_adv._version, x._version) != self._versions:
                raise AttackError("x or x_adv was changed in place after the attack; read "
                                  "AttackResult.norms before changing them")
            self._norms, self._pair = all_norms(x_adv - x), None
        return self._norms

    def __getstate__(self) -> dict[str, Any]:  # a copy or a pickle carries the values
        return {"_pair": None, "_versions": None, "_norms": self._computed()}

    def __getitem__(self, key: str) -> Tensor:
        return self._computed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._computed())

    def __len__(self) -> int:
        return len(self._computed())

    def __repr__(self) -> str:
        return repr(self._computed())


class Checked:
    """The model as an attack sees it: its first output is checked before the attack uses it
    (finite logits of K >= 2 classes, not probabilities; labels and targets in [0, K)), and
    its first output on an input that requires grad must have a graph back to it, so the
    checks ride on the attack's own forward passes instead of a separate probe. Floating
    outputs come back in the input's dtype (float64 logits of a float32 image: float32)."""

    def __init__(self, model: Model, y: Tensor, target: Tensor | None) -> None:
        self.model, self.y, self.target = model, y, target
        self.pending = self.graph_pending = True

    def __call__(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if isinstance(out, Tensor) and out.is_floating_point() and out.dtype != x.dtype:
            out = out.to(x.dtype)  # e.g. float64 logits of a float32 input: the attack's dtype
        if self.pending:
            self.check(out, x.shape[0])
        if self.graph_pending and x.requires_grad and torch.is_grad_enabled():
            check_graph(out, x)  # the first call that is about to take a gradient
            self.graph_pending = False
        return out

    def check(self, logits: Tensor, n: int) -> None:
        """Check the model's output on n rows (and, the first time, the labels' range)."""
        check_logits(logits, n)
        if self.pending:
            check_classes(self.y, logits.shape[1])
            if self.target is not None:
                check_classes(self.target, logits.shape[1], "target")
            self.pending = False


@dataclass
class Crafted:
    """What :meth:`Attack.perturb` may return instead of a bare tensor."""

    x_adv: Tensor
    queries: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


def is_success(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Untargeted: argmax != y. Targeted: argmax == target. Shape (N,) bool."""
    pred = logits.argmax(1)
    return pred != y if target is None else pred == target


def choose_target(logits: Tensor, y: Tensor, how: str, generator: torch.Generator) -> Tensor:
    """Pick a target != y for each example.

    Args:
        how: "random" (uniform over the other classes), "least_likely" (lowest logit),
            or "next" ((y + 1) mod K).
    """
    k = logits.shape[1]
    if how == "random":
        shift = torch.randint(1, k, y.shape, generator=generator, device=y.device)
        return (y + shift) % k
    if how == "least_likely":
        return logits.scatter(1, y[:, None], float("inf")).argmin(1)
    if how == "next":
        return (y + 1) % k
    raise ThreatModelError(f"unknown target selection {how!r}; use random, least_likely or next")


class Attack(Configured):
    """Base class: settings on self, the model at call time.

    Subclasses set ``norm`` (or None), ``eps`` (or None for minimum-norm attacks) and
    ``seed``, and implement :meth:`perturb`. An attack that declares its ``Settings`` (a
    :class:`~advlab.attacks.settings.Settings` dataclass, with ``preset`` and ``fixed``) gets
    its ``__init__``, validation and read-only setting attributes from it (see
    :mod:`advlab.attacks.settings`). Targeted-only attacks set ``targeted_only``
    and choose a target with ``target_selection`` when none is given. An attack whose output
    always lies in S(x) already (it projects every iterate with :func:`advlab.threat.region`)
    sets ``projects``, and its output is not projected a second time.
    """

    norm: str | None = None
    eps: float | Tensor | None = None
    seed: int = 0
    targeted_only: ClassVar[bool] = False
    projects: ClassVar[bool] = False
    target_selection: str = "random"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.Settings is not None:
            declare(cls)

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Tensor | Crafted:
        """Craft adversarial examples. x is detached and must not be modified in place.

        Args:
            model: the classifier (eval mode), x in [0, 1] -> logits.
            x: clean images, N x C x H x W.
            y: true labels (N,).
            target: target labels (N,) or None.
            eps: per-example radius (N,), or None for a minimum-norm attack.
            generator: the only source of randomness, seeded with ``self.seed``.
        """
        raise NotImplementedError

    @property
    def bounded(self) -> bool:
        return self.norm is not None and self.eps is not None

    @property
    def ball(self) -> Ball:
        if self.norm is None:
            raise AttackError(f"{type(self).__name__} has no norm ball")
        return ball(self.norm)

    def __call__(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None = None, *,
                 eps: float | Tensor | None = None) -> AttackResult:
        """Run the attack.

        Args:
            model: maps x in [0, 1] (N x C x H x W) to logits N x K; must be in eval mode.
            x: clean images in [0, 1].
            y: true labels, int64 (N,).
            target: optional int64 (N,) targets (targeted attack; success means pred == t).
            eps: optional per-call radius (float or (N,) tensor) overriding ``self.eps``.

        Returns:
            AttackResult with x_adv, success re-checked on x_adv, norms, queries, target.
        """
        check_images(x)
        check_labels(y, len(x))
        if target is not None:
            check_target(target, y)
            target = _plain(target.to(x.device))
        evaluator = unwrap(model)  # an oracle's model: the evaluator's checks are not queries
        check_eval_mode(evaluator)
        radius = None
        if self.bounded or eps is not None:
            radius = as_eps(self.eps if eps is None else eps, len(x), x)
        x, y = _plain(x), _plain(y.to(x.device))
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        checked = Checked(evaluator, y, target)
        if evaluator is model:  # the check rides on the attack's first forward pass
            model = checked
        else:  # an oracle: its queries are the attack's; probe the model behind it
            with torch.no_grad():
                checked(x[:PROBE_ROWS])
        if target is None and self.targeted_only:
            with torch.no_grad():
                target = choose_target(checked(x), y, self.target_selection, generator)
        out = self.perturb(model, x, y, target, radius, generator)
        crafted = out if isinstance(out, Crafted) else Crafted(out)
        return self._finish(evaluator, checked, x, y, target, radius, crafted)

    def _finish(self, evaluator: Model, checked: Checked, x: Tensor, y: Tensor,
                target: Tensor | None, radius: Tensor | None,
                crafted: Crafted) -> AttackResult:
        x_adv = crafted.x_adv.detach()
        if x_adv.shape != x.shape:
            raise AttackError(f"{type(self).__name__} returned shape {tuple(x_adv.shape)}")
        lo, hi = (v.item() for v in x_adv.aminmax())  # one pass; NaN propagates
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise AttackError(f"{type(self).__name__} produced NaN or Inf images")
        x_adv = x_adv.to(x.dtype)
        if self.projects and radius is not None:  # in S(x) already: not projected again
            if crafted.x_adv is x:  # nothing moved: the result never shares the caller's x
                x_adv = x.clone()
        elif radius is not None and self.norm is not None:
            x_adv = project_box(x, x_adv, radius, self.ball)
        else:
            x_adv = clip_box(x_adv)
        with torch.no_grad():
            logits = evaluator(x_adv)
        checked.check(logits, len(x))  # every row, whatever the attack saw
        success = is_success(logits, y, target)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: success %.3f", type(self).__name__, success.float().mean().item())
        return AttackResult(x_adv=x_adv, success=success, norms=Norms(x_adv, x),
                            queries=crafted.queries, target=target, logits=logits.detach(),
                            info=crafted.info)

    def __repr__(self) -> str:
        if self.Settings is not None:  # the settings it offers, in their order
            shown = inspect.signature(type(self)).parameters
            items = [(k, getattr(self.settings, k)) for k in shown]
        else:
            items = [(k, v) for k, v in vars(self).items() if not k.startswith("_")]
        fields = ", ".join(f"{k}={v!r}" for k, v in items)
        return f"{type(self).__name__}({fields})"


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Entry:
    factory: Callable[..., Attack]
    defaults: dict[str, Any]
    taxonomy: Taxonomy


_REGISTRY: dict[str, Entry] = {}


def register(name: str, *, knowledge: str, goal: str, norm: str, kind: str,
             bounded: bool = True, defaults: dict[str, Any] | None = None
             ) -> Callable[[Callable[..., Attack]], Callable[..., Attack]]:
    """Class decorator: register an attack under ``name`` with its taxonomy.

    ``defaults`` are keyword arguments that this name adds (e.g. ``{"norm": "l2"}`` for
    "pgd-l2"). Every registered attack must build with ``get(name)`` alone.
    """
    def deco(factory: Callable[..., Attack]) -> Callable[..., Attack]:
        if name in _REGISTRY:
            raise AttackError(f"attack name {name!r} registered twice")
        _REGISTRY[name] = Entry(factory, dict(defaults or {}),
                                Taxonomy(knowledge, goal, norm, kind, bounded))
        return factory
    return deco


def get(name: str, **kwargs: Any) -> Attack:
    """Build a registered attack by name; kwargs override its defaults.

    Raises:
        UnknownNameError: no attack of that name.
        ParameterError: a keyword the attack does not take, or a value of the wrong type.
    """
    if name not in _REGISTRY:
        raise UnknownNameError("attack", name, list(_REGISTRY))
    entry = _REGISTRY[name]
    check_kwargs(entry.factory, kwargs, f"attack {name!r}")
    return entry.factory(**{**entry.defaults, **kwargs})


def available() -> dict[str, Taxonomy]:
    """Every registered attack name -> its taxonomy."""
    return {name: e.taxonomy for name, e in sorted(_REGISTRY.items())}


def _plain(t: Tensor) -> Tensor:
    """t detached, as a tensor autograd accepts (a copy of one made under inference mode)."""
    return t.clone() if t.is_inference() else t.detach()


def unwrap(model: nn.Module | Model) -> Model:
    """The model behind an oracle-like wrapper (``.unwrapped``), else the model itself."""
    # looked up on the class: a missing attribute of an nn.Module costs a raised exception
    return model.unwrapped if hasattr(type(model), "unwrapped") else model  # type: ignore


#: input elements per block of :class:`RowBlocks` on CPU: 64 MNIST images, where a forward
#: and a forward+backward of mnist-cnn (one thread) cost about the least per row and
#: batches of hundreds up to twice as much (the activations of a small block stay in cache):
#: benchmarks/results/autoattack_vs_reference-blocks-<model>.json
BLOCK_ELEMENTS = 64 * 28 * 28


class RowBlocks:
    """The model applied to blocks of rows, for attacks that run many rows at once.

    On CPU a small conv net costs less per row in blocks of a few dozen rows than in batches
    of hundreds (``benchmarks/autoattack_vs_reference.py --sections blocks``); the rows are
    independent, so the logits and their gradients are the same (bitwise on the zoo models).
    With ``channels_last`` each block reaches the model in the channels-last layout, where
    oneDNN's convolutions cost less per row on CPU; the logits then agree with the contiguous
    ones to float rounding, not bitwise, and max-pooling may send a gradient to another of
    tied maxima.

    Args:
        model: the classifier.
        rows: the most rows per forward pass.
        channels_last: pass each block (N x C x H x W) in the channels-last layout.
    """

    def __init__(self, model: Model, rows: int, channels_last: bool = False) -> None:
        self.model, self.rows, self.channels_last = model, max(1, rows), channels_last

    @classmethod
    def around(cls, model: Model, x: Tensor) -> Model:
        """``model`` in blocks of :data:`BLOCK_ELEMENTS` input elements when x is on CPU and
        the model is not an oracle (whose queries are counted per call), in the channels-last
        layout where :func:`takes_channels_last`; else ``model``."""
        if x.device.type != "cpu" or unwrap(model) is not model or x[0].numel() == 0:
            return model
        return cls(model, BLOCK_ELEMENTS // x[0].numel(), takes_channels_last(model, x[:1]))

    def __call__(self, x: Tensor) -> Tensor:
        parts = [channels_last(p) if self.channels_last else p for p in x.split(self.rows)]
        return self.model(parts[0]) if len(parts) == 1 else \
            torch.cat([self.model(p) for p in parts])


def channels_last(x: Tensor) -> Tensor:
    """A copy of x (N x C x H x W) in the channels-last layout (strides C H W, 1, W C, C),
    also for C = 1, where ``contiguous(memory_format=...)`` keeps x as it is; differentiable."""
    n, c, h, w = x.shape
    return torch.empty_strided(x.shape, (c * h * w, 1, w * c, c), dtype=x.dtype,
                               device=x.device).copy_(x)


def takes_channels_last(model: Model, x: Tensor) -> bool:
    """Whether rows in the channels-last layout pay and keep the logits: ``model`` is an
    nn.Module in eval mode holding a Conv2d, x is N x C x H x W, and the model gives the same
    logits (to float rounding) on x in that layout. A model that cannot take the layout (one
    that ``view``s its activations) stays contiguous, and the reason is logged. A
    :class:`Checked` model is looked into (its checks ride on the attack's passes)."""
    model = model.model if isinstance(model, Checked) else model
    if x.dim() != 4 or not isinstance(model, nn.Module) or \
            any(m.training for m in model.modules()) or \
            not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    with torch.no_grad():
        want = model(x)
        try:
            got = model(channels_last(x))
        except RuntimeError as err:  # the model's own code rejects the layout
            log.info("%s: contiguous rows, channels-last ones fail: %s",
                     type(model).__name__, err)
            return False
    return got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def block_rows(model: Model) -> int | None:
    """The rows per block of the :class:`RowBlocks` that ``model`` runs through (looked for
    under :class:`Checked` wrappers), or None."""
    while isinstance(model, Checked):
        model = model.model
    return model.rows if isinstance(model, RowBlocks) else None


def logits_and_grad(model: Model, x: Tensor, loss: Callable[[Tensor, slice], Tensor]
                    ) -> tuple[Tensor, Tensor]:
    """The logits at x and the gradient of ``loss(logits, rows).sum()`` w.r.t. x.

    ``loss`` gets the logits of a block of rows and the slice of x they belong to (to pick
    the labels or targets of those rows). A model in :class:`RowBlocks` is run block by
    block, each block's backward right after its forward, while its activations are still
    in cache (``benchmarks/autoattack_vs_reference.py --sections blocks``); the rows are
    independent, so the gradient is the one of a single pass over all of them.
    """
    rows = block_rows(model) or max(len(x), 1)
    logits, grads = [], []
    for start in range(0, max(len(x), 1), rows):
        part = slice(start, start + rows)
        xg = _plain(x[part]).requires_grad_(True)
        z = model(xg)
        (g,) = torch.autograd.grad(loss(z, part).sum(), xg)
        logits.append(z.detach())
        grads.append(g)
    if len(logits) == 1:
        return logits[0], grads[0]
    return torch.cat(logits), torch.cat(grads)


def first_of_each(owner: Tensor, mask: Tensor | None = None) -> Tensor:
    """Positions of the first entry of each distinct value in ``owner`` (int64 (R,)), among
    the entries where ``mask`` holds (default: all), in increasing value order.

    For attacks that run several rows per example (targets, restarts): one row per example.
    """
    pos = torch.arange(len(owner), device=owner.device)
    if mask is not None:
        pos = torch.where(mask, pos, len(owner))
    if len(owner) == 0:
        return pos
    first = torch.full((int(owner.max()) + 1,), len(owner), device=owner.device)
    first.scatter_reduce_(0, owner, pos, "amin")
    return first[first < len(owner)]
