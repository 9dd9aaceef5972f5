"""Checks on what users hand to advlab, each raising a clear :mod:`advlab.errors` error.

Every public entry point (attacks, detectors, defenses, evaluation) calls these instead of
trusting its inputs, so a bad input is never a silent wrong answer.
"""
from __future__ import annotations

import collections.abc
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from advlab.errors import (
    InputError,
    LabelError,
    ModelModeError,
    ModelOutputError,
    ParameterError,
)


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
            f"advlab.zoo.Normalize), got values in [{lo!r}, {hi!r}]")


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


def check_graph(out: Tensor, x: Tensor) -> None:
    """The model's output must have an autograd graph back to x (an attack about to take
    its gradient), else :class:`ModelOutputError`: a ``.detach()``, an argmax, a lookup or a
    ``torch.no_grad()`` inside the model's forward leaves gradient attacks nothing to follow.

    A walk of the graph from ``out`` to x's own node (no backward pass is run).
    """
    goal = x.grad_fn
    seen: dict[int, Any] = {}  # the nodes kept alive: a freed node's id could be reused
    todo = [out.grad_fn] if out.grad_fn is not None else []
    while todo:
        node = todo.pop()
        if node is goal or getattr(node, "variable", None) is x:
            return
        for nxt, _ in node.next_functions:
            if nxt is not None and id(nxt) not in seen:
                seen[id(nxt)] = nxt
                todo.append(nxt)
    raise ModelOutputError(
        "the model's output has no gradient path to its input (a .detach(), an argmax, a "
        "lookup or torch.no_grad() inside its forward): gradient attacks cannot run on it; "
        "use a black-box attack, or advlab.evaluation.ladder, whose BPDA rung replaces the "
        "non-differentiable step")


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


# ----------------------------------------------------------------------------- keyword arguments


def check_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], what: str,
                 skip: int = 0) -> None:
    """Every keyword of ``kwargs`` must be a parameter of ``fn`` (a function or a class),
    with a value of its annotated type: ``steps=2.5`` for ``steps: int``, ``eps="0.1"`` or
    NaN for ``eps: float`` are refused here instead of failing (or passing) deep inside.

    Args:
        fn: the callable the keywords are for.
        kwargs: the keywords.
        what: how the error names ``fn`` ("attack 'pgd'").
        skip: leading positional parameters that are not settings (model, x, y).

    Raises:
        ParameterError: an unknown keyword, or a value that does not fit its annotation.
    """
    params = list(inspect.signature(fn).parameters.values())[skip:]
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params)
    hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    for key, value in kwargs.items():
        if key not in named:
            if open_ended:
                continue
            raise ParameterError(f"{what} has no parameter {key!r}; its parameters: "
                                 f"{', '.join(named) or 'none'}")
        hint = hints.get(key, Any)
        if not fits_type(value, hint):
            raise ParameterError(f"{what}: {key} must be {describe_type(hint)}, got {value!r}")


def fits_type(v: Any, hint: Any) -> bool:
    """Whether value v fits type annotation ``hint`` (plain types, unions, Literal,
    containers of plain types; anything else is accepted). A float must not be NaN; an int
    or a float is never a bool."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits_type(v, a) for a in args)
    if origin is typing.Literal:
        return v in args
    if hint is type(None) or hint is None:
        return v is None
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return len(inner) != 1 or all(fits_type(e, inner[0]) for e in v)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(v, Mapping)
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return callable(v)
    if isinstance(hint, type) and origin is None:
        return isinstance(v, hint)
    return True


def describe_type(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(map(repr, args))
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and origin is None:
        return {"int": "an integer", "float": "a number (not NaN)", "bool": "true or false",
                "str": "a string"}.get(hint.__name__, f"a {hint.__name__}")
    return f"a {getattr(origin, '__name__', str(hint))}"
