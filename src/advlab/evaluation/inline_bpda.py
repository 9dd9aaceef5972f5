r"""Automatic BPDA for non-differentiable code written inline in a model's ``forward``.

:mod:`advlab.evaluation.bpda` replaces the backward pass of *submodules*; a step written
in the middle of a model's own ``forward`` (``h = torch.floor(4 * h) / 4`` between two
layers, ``(x > 0.5).float()``, ``one_hot(z.argmax(1))``) is no submodule. Here a
:class:`torch.overrides.TorchFunctionMode`, active only during the model's forward, sees
every torch function and tensor method the forward calls and replaces each shattering one
by a straight-through version: the forward value is the same, bit for bit, and the backward
pass is the identity of the step's input (Athalye et al.'s BPDA with
:math:`\hat g(u) = u`, written :math:`u + \mathrm{sg}(g(u) - u)`):

- rounding steps: ``round``, ``floor``, ``ceil``, ``trunc``, ``sign`` (functions and methods);
- comparisons cast to a float: ``(a > b)`` (``gt``, ``ge``, ``lt``, ``le``) then ``.float()``,
  ``.to(dtype)``, ``.type_as`` or a product with a float: the backward of the step
  :math:`H(a - b)` is that of :math:`a - b`;
- one-hot argmax: ``one_hot(z.argmax(dim))`` (or ``argmin``) cast to a float, whose
  backward is that of z (of -z for argmin) when the shapes agree.

Everything else runs untouched. :class:`InlineStraightThrough` wraps a model so that its
forward runs under the mode; :func:`inline_surrogate` installs it only when the model's
gradient is useless and the mode replaced something in its forward (found by running it).

References:
    Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of security", ICML
    2018, arXiv:1802.00420 (Section 4.1, BPDA; the straight-through estimator of
    Bengio, Leonard & Courville 2013, arXiv:1308.3432).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

STEPS = ("round", "floor", "ceil", "trunc", "sign")
COMPARISONS = {"gt": 1.0, "ge": 1.0, "greater": 1.0, "greater_equal": 1.0,
               "lt": -1.0, "le": -1.0, "less": -1.0, "less_equal": -1.0}
CASTS = ("float", "double", "half", "bfloat16", "to", "type", "type_as")
PRODUCTS = ("mul", "rmul", "multiply")


def _name(func: Any) -> str:
    """The call's name without dunder underscores (``Tensor.__gt__`` is "gt": torch
    versions differ in which of the two an operator dispatches as)."""
    return getattr(func, "__name__", "").strip("_")


def _graded(t: Any) -> bool:
    return isinstance(t, Tensor) and t.requires_grad and t.is_floating_point()


class StraightThroughMode(TorchFunctionMode):
    """The mode: shattering torch calls get an identity backward (module docstring).

    Attributes:
        replaced: names of the calls it replaced (in order, once each).
    """

    def __init__(self) -> None:
        super().__init__()
        self.replaced: list[str] = []
        # a step's integer or bool output -> (that output, the float its backward follows)
        self._sources: dict[int, tuple[Tensor, Tensor]] = {}

    def _note(self, what: str) -> None:
        if what not in self.replaced:
            self.replaced.append(what)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = _name(func)
        out = func(*args, **kwargs)
        if not isinstance(out, Tensor) or not args:
            return out
        first = args[0]
        if name in STEPS and _graded(first) and out.shape == first.shape:
            self._note(name)
            return first + (out - first).detach()
        if name in COMPARISONS and out.dtype == torch.bool and len(args) > 1:
            diff = _difference(first, args[1], COMPARISONS[name])
            if diff is not None:
                self._sources[id(out)] = (out, diff)
            return out
        if name in ("argmax", "argmin") and _graded(first):
            self._sources[id(out)] = (out, first if name == "argmax" else -first)
            return out
        if name == "one_hot" and id(first) in self._sources:
            z = self._sources[id(first)][1]
            if z.shape == out.shape:
                self._sources[id(out)] = (out, z)
            return out
        src, scale = self._source(name, args)
        if src is not None and out.is_floating_point() and src.shape == out.shape:
            self._note(f"{name} of a step")
            return out + scale * (src - src.detach()).to(out.dtype)
        return out

    def _source(self, name: str, args: tuple) -> tuple[Tensor | None, Any]:
        """(the float whose backward a recorded step output among ``args`` follows, the
        factor of its backward): a cast (1), or a product with a constant (that constant)."""
        for i, a in enumerate(args[:2]):
            if not (isinstance(a, Tensor) and id(a) in self._sources and
                    self._sources[id(a)][0] is a):
                continue
            if name in CASTS and i == 0:
                return self._sources[id(a)][1], 1.0
            other = args[1 - i] if len(args) > 1 else None
            if name in PRODUCTS and isinstance(other, (int, float)):
                return self._sources[id(a)][1], float(other)
            if name in PRODUCTS and isinstance(other, Tensor) and not other.requires_grad:
                return self._sources[id(a)][1], other
        return None, 1.0


def _difference(a: Any, b: Any, sign: float) -> Tensor | None:
    """sign * (a - b), when a gradient can pass through it."""
    if not (_graded(a) or _graded(b)):
        return None
    return sign * (a - b) if isinstance(a, Tensor) else sign * (torch.as_tensor(a) - b)


class InlineStraightThrough(nn.Module):
    """``model`` whose forward runs under :class:`StraightThroughMode`: the same outputs,
    an identity backward through the shattering calls of its own code."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.training = model, model.training
        self.replaced: list[str] = []

    def forward(self, x: Tensor) -> Tensor:
        with StraightThroughMode() as mode:
            out = self.model(x)
        for r in mode.replaced:
            if r not in self.replaced:
                self.replaced.append(r)
        return out


def replaced_calls(model: nn.Module, x: Tensor) -> list[str]:
    """The calls :class:`StraightThroughMode` replaces in one forward pass of x."""
    wrapped = InlineStraightThrough(model)
    with torch.enable_grad():
        wrapped(x.detach().clone().requires_grad_(True))
    return wrapped.replaced
