r"""Automatic BPDA: find the layers that shatter the gradient and replace only their backward.

Athalye, Carlini & Wagner's Backward Pass Differentiable Approximation attacks a network
:math:`f = h \circ g \circ e` whose layer :math:`g` has a useless gradient (zero almost
everywhere, or undefined) by running the forward pass unchanged and using, in the backward
pass only, a differentiable :math:`\hat g \approx g`:

.. math::  \hat y = \hat g(u) + \mathrm{sg}\big(g(u) - \hat g(u)\big)

(``sg`` = stop-gradient), so :math:`\hat y = g(u)` exactly while
:math:`\partial \hat y / \partial u = \partial \hat g / \partial u`.

:func:`probe` finds such layers in any model, with no knowledge of the defense: every
submodule is run on the inputs it receives in a forward pass of the probe images, and flagged
when its output moves under a small perturbation of its input in a way its backward pass does
not predict (:func:`_useless`): a gradient that is zero or vanishing where the output jumps,
NaN/Inf, or absent (step, sign, round, floor, a steep sigmoid, argmax, one-hot, sort, a
table lookup, a purifier run under ``no_grad``). The innermost flagged modules win: a
parent is flagged only for what remains after its children are replaced. Inline code of the
model itself is probed the same way at its two ends: the input of the first submodule (a
preprocessing written in ``forward``) and the model's output given the last submodule's
output (an inline head).

The replacement :math:`\hat g`: the identity where input and output have as many entries
(reshaped) and correlate (:math:`g(u) \approx u`: quantisation, purification, argmax one-hot
of logits), else an affine map fitted by ridge least squares on the probed (input, output)
pairs (a vote or a nearest-neighbour lookup over features). :func:`straight_through`
installs them as forward hooks on a deep copy of the model (the caller's model is never
touched). Shattering calls in the middle of the model's own forward (a rounding between two
layers) are no submodule: :func:`surrogate` then runs the forward under
:mod:`advlab.evaluation.inline_bpda`'s straight-through function mode.

References:
    Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of security", ICML
    2018, arXiv:1802.00420 (Section 4.1, BPDA).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advlab.evaluation.inline_bpda import InlineStraightThrough, replaced_calls

log = logging.getLogger(__name__)

ROOT_INPUT = "<input>"   # the model's own preprocessing, before its first submodule
ROOT_OUTPUT = "<output>"  # the model's own head, after its last submodule
FORWARD = "<forward>"  # shattering calls inline in the model's own forward


@dataclass
class Shattered:
    """One layer found by :func:`probe`.

    Attributes:
        name: the submodule's qualified name, or :data:`ROOT_INPUT` / :data:`ROOT_OUTPUT`
            / :data:`FORWARD`.
        why: "zero" (the local gradient vanishes), "nonfinite" or "detached" (no gradient).
        replacement: "identity", "affine", or "straight-through: <calls>" (FORWARD).
        weight, bias: the affine map (flattened input -> flattened output), when affine.
        first: for ROOT_INPUT / ROOT_OUTPUT, the submodule at the model's boundary.
    """

    name: str
    why: str
    replacement: str
    weight: Tensor | None = field(default=None, repr=False)
    bias: Tensor | None = field(default=None, repr=False)
    first: str | None = None


# ----------------------------------------------------------------------------- the probe


def _useless(fn: Any, u: Tensor, rel: float, share: float = 0.5) -> str | None:
    r"""Why ``fn``'s backward pass at u does not describe how its output moves, else None.

    With :math:`\delta` noise of ``rel`` times u's spread, the change
    :math:`\Delta = fn(u + \delta) - fn(u)` is compared, entry by entry, with the change the
    backward pass predicts, :math:`J\delta` (by double backward, the attack's own view).
    "detached" (no graph to u) or "nonfinite" (NaN/Inf gradient) when the output moves at
    all; "zero" when on more than ``share`` of the entries that moved, :math:`|J\delta| <
    0.1 |\Delta|` (a step, a rounding, a steep sigmoid: the gradient is zero or vanishing
    where the output jumps). A ReLU or a max-pool, whose gradient predicts their change
    exactly except at kinks, is not flagged.
    """
    g = torch.Generator().manual_seed(0)
    delta = rel * max(u.float().std().item(), 1e-3) * torch.randn(u.shape, generator=g).to(u)
    with torch.no_grad():
        before, after = fn(u), fn(u + delta)
    if not isinstance(after, Tensor) or not after.is_floating_point() or \
            after.shape != before.shape:
        return None
    change = (after - before).abs()
    moved = change > 1e-6 * (before.abs().max().item() + 1e-12)
    if not moved.any():
        return None
    ug = u.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = fn(ug)
        if not out.requires_grad:
            return "detached"
        w = torch.zeros_like(out, requires_grad=True)
        (gu,) = torch.autograd.grad(out, ug, grad_outputs=w, create_graph=True,
                                    allow_unused=True)
        if gu is None:
            return "detached"
        if not gu.requires_grad:  # the gradient is the same (zero) for every w
            jd = torch.zeros_like(out)
        else:
            (jd,) = torch.autograd.grad(gu, w, grad_outputs=delta, allow_unused=True)
            jd = torch.zeros_like(out) if jd is None else jd.detach()
    if not torch.isfinite(jd).all():
        return "nonfinite"
    bad = moved & (jd.abs() < 0.1 * change)
    return "zero" if bad.sum().item() > share * moved.sum().item() else None


def _any_useless(fn: Any, u: Tensor, rels: tuple[float, ...]) -> str | None:
    """The first reason :func:`_useless` gives at the noise scales ``rels``, else None."""
    for rel in rels:
        why = _useless(fn, u, rel)
        if why is not None:
            return why
    return None


def _replacement(u: Tensor, v: Tensor, ridge: float, max_dim: int
                 ) -> tuple[str, Tensor | None, Tensor | None]:
    """The identity when v has u's shape and follows it, else a ridge-fitted affine map."""
    a, b = u.detach().flatten(1).double(), v.detach().flatten(1).double()
    if a.shape == b.shape:
        ac, bc = a - a.mean(0), b - b.mean(0)
        corr = (ac * bc).sum() / (ac.norm() * bc.norm() + 1e-12)
        if corr.item() > 0.5:
            return "identity", None, None
    if a.shape[1] > max_dim:
        return "identity" if a.shape == b.shape else "none", None, None
    a1 = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
    gram = a1.T @ a1 + ridge * len(a) * torch.eye(a1.shape[1], dtype=a.dtype)
    sol = torch.linalg.solve(gram, a1.T @ b)
    return "affine", sol[:-1].to(u.dtype), sol[-1].to(u.dtype)


class _Recorder:
    """Forward hooks that record every submodule's first input and output (in call order)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: dict[str, tuple[nn.Module, Tensor, Tensor]] = {}
        self.handles = [m.register_forward_hook(self._hook(n))
                        for n, m in model.named_modules() if n]

    def _hook(self, name: str) -> Any:
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            if name not in self.calls and args and isinstance(args[0], Tensor) and \
                    isinstance(out, Tensor) and args[0].is_floating_point():
                self.calls[name] = (mod, args[0].detach(), out.detach())
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _is_inner(name: str, names: set[str]) -> bool:
    """No other flagged module is a descendant of ``name``."""
    return not any(o != name and o.startswith(name + ".") for o in names)


def probe(model: nn.Module, x: Tensor, *, rel: tuple[float, ...] = (0.1, 0.5),
          ridge: float = 1e-3,
          max_dim: int = 4096, rounds: int = 3) -> list[Shattered]:
    """The model's shattered layers (see the module docstring), innermost first.

    Args:
        model: any nn.Module, x in [0, 1] -> logits (eval mode; not modified).
        x: probe images (their forward pass gives every layer its inputs).
        rel: the probing noise scales, as fractions of each layer input's standard
            deviation; a layer is flagged when it fails at any of them (a steep sigmoid
            looks flat to small noise).
        ridge: ridge coefficient of the fitted affine replacements.
        max_dim: largest flattened input an affine replacement is fitted for.
        rounds: probe, replace the innermost flagged modules, probe again (a parent whose
            own code shatters the gradient too is found in a later round).

    Returns:
        The layers to replace; [] when every layer has a useful gradient.
    """
    found: list[Shattered] = []
    for _ in range(rounds):
        new = _probe_once(straight_through(model, found) if found else model, x, rel, ridge,
                          max_dim, {s.name for s in found})
        if not new:
            break
        found += new
    if found:
        log.info("automatic BPDA: %s", ", ".join(f"{s.name} ({s.why}, {s.replacement})"
                                                  for s in found))
    return found


def _probe_once(model: nn.Module, x: Tensor, rel: tuple[float, ...], ridge: float,
                max_dim: int,
                known: set[str]) -> list[Shattered]:
    rec = _Recorder(model)
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        rec.close()
    flagged: dict[str, tuple[str, Tensor, Tensor]] = {}
    for name, (mod, u, v) in rec.calls.items():
        if name in known:
            continue
        why = _any_useless(mod, u, rel)
        if why is not None:
            flagged[name] = (why, u, v)
    inner = {n: f for n, f in flagged.items() if _is_inner(n, set(flagged))}
    result = []
    for name, (why, u, v) in inner.items():
        kind, w, b = _replacement(u, v, ridge, max_dim)
        if kind != "none":
            result.append(Shattered(name, why, kind, w, b))
    if not result and rec.calls:
        result += _root_ends(model, x, out, rec, rel, ridge, max_dim, known)
    return result


def _root_ends(model: nn.Module, x: Tensor, out: Tensor, rec: _Recorder,
               rel: tuple[float, ...],
               ridge: float, max_dim: int, known: set[str]) -> list[Shattered]:
    """The model's inline code at both ends: x -> first submodule's input, and last
    submodule's output -> the model's output."""
    tops = [n for n in rec.calls if "." not in n]
    if not tops:
        return []
    result: list[Shattered] = []
    first, last = tops[0], tops[-1]
    u0 = rec.calls[first][1]
    if ROOT_INPUT not in known and u0.numel() == x.numel() and \
            not torch.equal(u0.reshape(x.shape), x):
        why = _any_useless(lambda xi: _input_of(model, first, xi), x, rel)
        if why is not None:
            result.append(Shattered(ROOT_INPUT, why, "identity", first=first))
    v1 = rec.calls[last][2]
    if ROOT_OUTPUT not in known and v1.is_floating_point():
        why = _any_useless(lambda vi: _output_given(model, last, x, vi), v1, rel)
        if why is not None:
            kind, w, b = _replacement(v1, out, ridge, max_dim)
            if kind != "none":
                result.append(Shattered(ROOT_OUTPUT, why, kind, w, b, first=last))
    return result


def _input_of(model: nn.Module, name: str, x: Tensor) -> Tensor:
    """The input that submodule ``name`` receives when the model runs on x."""
    got: list[Tensor] = []
    sub = model.get_submodule(name)
    h = sub.register_forward_pre_hook(lambda m, a: got.append(a[0]) if not got else None)
    try:
        model(x)
    finally:
        h.remove()
    return got[0]


def _output_given(model: nn.Module, name: str, x: Tensor, v: Tensor) -> Tensor:
    """The model's output on x when submodule ``name`` outputs v instead of its own."""
    h = model.get_submodule(name).register_forward_hook(lambda m, a, o: v)
    try:
        return model(x)
    finally:
        h.remove()


# ----------------------------------------------------------------------------- the surrogate


def _approx(s: Shattered, u: Tensor, v: Tensor) -> Tensor:
    """:math:`\\hat g(u) + sg(v - \\hat g(u))`: v forward, the replacement's gradient back."""
    if s.replacement == "identity":
        u = u.reshape(v.shape)
        return u + (v - u).detach()
    assert s.weight is not None and s.bias is not None
    lin = (u.flatten(1) @ s.weight + s.bias).view(v.shape)
    return lin + (v - lin).detach()


def straight_through(model: nn.Module, layers: list[Shattered]) -> nn.Module:
    """A deep copy of ``model`` whose ``layers`` keep their forward and use their
    replacement's gradient (the model passed in is not modified).

    Shape: the copy maps x like the model (the same outputs, bit for bit).
    """
    net = copy.deepcopy(model)
    for s in layers:
        if s.name == ROOT_INPUT:
            _hook_root_input(net, s)
        elif s.name == ROOT_OUTPUT:
            _hook_root_output(net, s)
        else:
            net.get_submodule(s.name).register_forward_hook(
                lambda m, a, o, s=s: _approx(s, a[0], o) if o.is_floating_point() else o)
    return net


def _hook_root_input(net: nn.Module, s: Shattered) -> None:
    """The first submodule's input, straight-through to the model's input x (only inside
    the model's own forward: the submodule called alone is left as it is)."""
    assert s.first is not None
    seen: dict[str, Tensor] = {}
    net.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    net.register_forward_hook(lambda m, a, o: seen.clear())

    def pre(m: nn.Module, a: tuple) -> tuple:
        x = seen.pop("x", None)  # the first call inside the forward only
        if x is None or x.numel() != a[0].numel():
            return a
        return (_approx(s, x, a[0]), *a[1:])
    net.get_submodule(s.first).register_forward_pre_hook(pre)


def _hook_root_output(net: nn.Module, s: Shattered) -> None:
    """The model's output, with the replacement's gradient to the last submodule's output."""
    assert s.first is not None
    seen: dict[str, Tensor] = {}
    net.get_submodule(s.first).register_forward_hook(lambda m, a, o: seen.__setitem__("v", o))

    def post(m: nn.Module, a: tuple, o: Tensor) -> Tensor:
        v = seen.pop("v", None)
        return o if v is None else _approx(s, v, o)
    net.register_forward_hook(post)


def surrogate(model: nn.Module, x: Tensor, **kwargs: Any) -> tuple[nn.Module, list[Shattered]]:
    """:func:`probe` then :func:`straight_through`: (the BPDA copy, the layers replaced);
    the copy is the model itself when nothing is shattered. When its gradient is still
    useless, the shattering calls inline in the model's own forward get a straight-through
    backward too (:mod:`advlab.evaluation.inline_bpda`; listed as :data:`FORWARD`)."""
    layers = probe(model, x, **kwargs)
    net = straight_through(model, layers) if layers else model
    why = _any_useless(net, x, kwargs.get("rel", (0.1, 0.5)))
    calls = replaced_calls(net, x) if why is not None else []
    if calls:
        log.info("automatic BPDA inline in forward: %s", ", ".join(calls))
        net = InlineStraightThrough(net)
        layers = [*layers, Shattered(FORWARD, why or "zero",
                                     "straight-through: " + ", ".join(calls))]
    return net, layers
