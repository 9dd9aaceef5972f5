"""The user's own models: one place that turns a model description into an ``nn.Module``.

A model is described by a :class:`ModelSpec` (a ``[[models]]`` table of a configuration, or
``advlab attack --model``):

- a zoo name (``name = "mnist-cnn"``), trained on first use and cached (:mod:`advlab.zoo`);
- a zoo architecture with the user's weights (``arch = "mnist-cnn"``,
  ``weights = "w.safetensors"``);
- the user's own network: ``factory = "package.module:callable"`` or
  ``factory = "path/to/net.py:build"`` called with ``kwargs``, filled from ``weights``
  (safetensors, or a torch state dict read with ``torch.load(weights_only=True)``; nothing
  else is ever unpickled), every key and shape checked. torchvision and timm architectures
  come the same way (``factory = "torchvision.models:resnet18"``, ``kwargs = { num_classes =
  10 }``) when those packages are installed; their weights always come from the user's file,
  nothing is downloaded.

``normalize = { mean = [...], std = [...] }`` puts :class:`advlab.zoo.Normalize` in front of
the network (its layers are then named ``net.<layer>``), so eps stays in pixel space.

:func:`check_input` runs one probe forward on the evaluation images before any attack, so a
model that does not fit the data fails with one clear error. :func:`autocast` runs a model's
forward (and so its backward) in bf16 or fp16; the runner re-judges its outputs in fp32.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import logging
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from advlab import zoo
from advlab.errors import ConfigError, FactoryError, InputError, ModelOutputError

log = logging.getLogger(__name__)

#: keys of a ``[[models]]`` table
KEYS = frozenset({"name", "factory", "kwargs", "weights", "normalize", "arch", "file"})

#: ``precision`` names -> the autocast dtype (None: plain fp32)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                             "fp16": torch.float16}

_DOWNLOADERS = ("torchvision", "timm")  # packages whose factories can fetch weights


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate; see the module docstring.

    Attributes:
        name: the model's name in the report (a zoo name when nothing else is given).
        factory: ``"package.module:callable"`` or ``"path/to/file.py:callable"``.
        kwargs: keyword arguments of the factory.
        weights: a safetensors (or torch state dict) file for the factory's or ``arch``'s
            network.
        normalize: (mean, std), one value or one per channel, applied first.
        arch: a zoo architecture to fill from ``weights`` (instead of a factory).
    """

    name: str
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    arch: str | None = None

    @property
    def is_zoo(self) -> bool:
        """Just a name: a zoo (or cached robust) model."""
        return self.factory is None and self.arch is None

    def to_dict(self) -> dict[str, Any]:
        """The ``[[models]]`` table this spec reads back from (keys left at their defaults
        left out)."""
        d: dict[str, Any] = {"name": self.name}
        for k in ("factory", "weights", "arch"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.kwargs:
            d["kwargs"] = dict(self.kwargs)
        if self.normalize is not None:
            d["normalize"] = {"mean": list(self.normalize[0]), "std": list(self.normalize[1])}
        return d

    def relative_to(self, base: Path) -> ModelSpec:
        """The same spec with its relative file paths read from folder ``base``."""
        factory = self.factory
        if factory is not None and _is_file_factory(factory):
            target, _, attr = factory.rpartition(":")
            factory = f"{_rebase(target, base)}:{attr}"
        weights = None if self.weights is None else _rebase(self.weights, base)
        return replace(self, factory=factory, weights=weights)


def _rebase(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base / p)


def _is_file_factory(factory: str) -> bool:
    return factory.rpartition(":")[0].endswith(".py")


def model_spec(d: Mapping[str, Any] | str, where: str) -> ModelSpec:
    """Validate one ``[[models]]`` entry (a name or a table) into a :class:`ModelSpec`.

    Raises:
        ConfigError: unknown keys, wrong types, or a combination that says two things.
    """
    d = {"name": d} if isinstance(d, str) else dict(d)
    if not isinstance(d.get("name"), str) or not d["name"]:
        raise ConfigError(f"{where} must be a name or a table with a 'name', got {d!r}")
    extra = set(d) - KEYS
    if extra:
        raise ConfigError(f"unknown key(s) {sorted(extra)} in {where}; allowed: "
                          f"{', '.join(sorted(KEYS))}")
    if "file" in d:  # the older spelling of weights
        if "weights" in d:
            raise ConfigError(f"{where}: give 'weights' or 'file', not both")
        d["weights"] = d.pop("file")
    for k in ("factory", "weights", "arch"):
        if k in d and (not isinstance(d[k], str) or not d[k]):
            raise ConfigError(f"{where}.{k} must be a non-empty string, got {d[k]!r}")
    if "factory" in d and "arch" in d:
        raise ConfigError(f"{where}: give a 'factory' or a zoo 'arch', not both")
    if "arch" in d and "weights" not in d:
        raise ConfigError(f"{where}: a zoo 'arch' needs its weights 'file' (or 'weights')")
    if "weights" in d and "factory" not in d and "arch" not in d:
        raise ConfigError(f"{where}: a weights file needs its 'arch' (a zoo architecture) "
                          f"or a 'factory'")
    if "factory" in d:
        _split_factory(d["factory"], where)
    kwargs = d.get("kwargs", {})
    if not isinstance(kwargs, dict) or "factory" not in d and kwargs:
        raise ConfigError(f"{where}.kwargs must be a table of the factory's arguments")
    _no_download(d.get("factory"), kwargs, where)
    return ModelSpec(d["name"], d.get("factory"), dict(kwargs), d.get("weights"),
                     _normalize(d.get("normalize"), where), d.get("arch"))


def _split_factory(factory: str, where: str) -> tuple[str, str]:
    target, sep, attr = factory.rpartition(":")
    if not sep or not target or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise ConfigError(f"{where}.factory must be 'package.module:callable' or "
                          f"'path/to/file.py:callable', got {factory!r}")
    return target, attr


def _no_download(factory: str | None, kwargs: Mapping[str, Any], where: str) -> None:
    """torchvision's ``weights`` and timm's ``pretrained`` would download; advlab never does."""
    if factory is None or factory.split(".")[0].split(":")[0] not in _DOWNLOADERS:
        return
    for k in ("weights", "pretrained", "pretrained_cfg", "checkpoint_path"):
        if kwargs.get(k):
            raise ConfigError(f"{where}.kwargs.{k} would download or read weights inside "
                              f"{factory}; advlab downloads nothing: give your weights file "
                              f"as the model's 'weights'")


def _normalize(v: Any, where: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) != {"mean", "std"}:
        raise ConfigError(f"{where}.normalize must be {{ mean = [...], std = [...] }}, got {v!r}")
    out = []
    for k in ("mean", "std"):
        vals = v[k] if isinstance(v[k], list) else [v[k]]
        if not vals or not all(isinstance(e, (int, float)) and not isinstance(e, bool)
                               and math.isfinite(e) for e in vals):
            raise ConfigError(f"{where}.normalize.{k} must be a number or a list of numbers, "
                              f"got {v[k]!r}")
        out.append(tuple(float(e) for e in vals))
    mean, std = out
    if len(mean) != len(std) or min(std) <= 0:
        raise ConfigError(f"{where}.normalize: mean and std need one value each per channel "
                          f"and std > 0, got mean {list(mean)}, std {list(std)}")
    return mean, std


# ----------------------------------------------------------------------------- building


def build(spec: ModelSpec) -> nn.Module:
    """The model a spec describes, in eval mode on the CPU.

    Args:
        spec: a :class:`ModelSpec`.

    Returns:
        The network (behind :class:`~advlab.zoo.Normalize` when ``spec.normalize``).

    Raises:
        UnknownNameError: a zoo name or ``arch`` that does not exist.
        FactoryError: a factory that cannot be imported, raises, or returns no module.
        ModelFileError: weights that are missing, untrusted or do not fit the network.
    """
    if spec.is_zoo:
        net = zoo.load(spec.name)
    else:
        net = zoo.build(spec.arch) if spec.arch is not None else call_factory(spec)
        if spec.weights is not None:
            zoo.load_weights(net, spec.weights)
        else:
            log.warning("model %s: no weights given; %s keeps the weights it made",
                        spec.name, spec.factory)
    if spec.normalize is not None:
        net = nn.Sequential(OrderedDict(norm=zoo.Normalize(*spec.normalize), net=net))
    return net.eval()


def call_factory(spec: ModelSpec) -> nn.Module:
    """``factory(**kwargs)``, checked to be an ``nn.Module``."""
    assert spec.factory is not None
    fn = load_factory(spec.factory)
    try:
        net = fn(**spec.kwargs)
    except Exception as exc:  # the user's code: any error is reported as the factory's
        raise FactoryError(f"model {spec.name!r}: factory {spec.factory} raised "
                           f"{type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(net, nn.Module):
        raise FactoryError(f"model {spec.name!r}: factory {spec.factory} returned "
                           f"{type(net).__name__}, not a torch.nn.Module")
    return net


def load_factory(factory: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:callable"`` or ``"path/file.py:callable"``.

    Raises:
        FactoryError: the module or file cannot be imported, or has no such callable.
    """
    target, attr = _split_factory(factory, "factory")
    module = _module_from_file(Path(target)) if target.endswith(".py") else \
        _import(target, factory)
    try:
        fn = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise FactoryError(f"factory {factory}: {target} has no {attr!r}") from None
    if not callable(fn):
        raise FactoryError(f"factory {factory}: {attr!r} is a {type(fn).__name__}, "
                           f"not a callable")
    return fn


def _import(module: str, factory: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = f" (an optional extra: pip install {top})" if top in _DOWNLOADERS else ""
        raise FactoryError(f"factory {factory}: cannot import {module}{extra}: "
                           f"{_first_line(exc)}") from exc
    except Exception as exc:  # the user's module raised while importing
        raise FactoryError(f"factory {factory}: importing {module} raised "
                           f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _module_from_file(path: Path) -> ModuleType:
    """Import a user's Python file once per path, as module ``advlab_user_<hash>``."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FactoryError(f"factory file {path} does not exist")
    name = "advlab_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FactoryError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look it up
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file raised while importing
        del sys.modules[name]
        raise FactoryError(f"importing {path} raised {type(exc).__name__}: "
                           f"{_first_line(exc)}") from exc
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- checks


def check_input(model: nn.Module, x: Tensor, num_classes: int, name: str = "the model",
                exact: bool = True) -> None:
    """One probe forward on two images: the model accepts the data's shape and returns
    logits N x K with K the data's number of classes.

    Args:
        model: the model, on x's device.
        x: evaluation images N x C x H x W.
        num_classes: the data's number of classes.
        name: the model's name for the message.
        exact: K must equal ``num_classes`` (False: K >= ``num_classes``, when only the
            labels seen are known).

    Raises:
        InputError: the model rejects images of this shape (channels, size).
        ModelOutputError: outputs that are not N x num_classes logits.
    """
    probe = x[:2]
    shape = "x".join(map(str, probe.shape[1:]))
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as exc:  # the model's own complaint about the shape, re-raised as ours
        raise InputError(f"model {name} rejects the data's {shape} images (C x H x W; "
                         f"[data] channels and resize adapt them): {type(exc).__name__}: "
                         f"{_first_line(exc)}") from exc
    if not isinstance(out, Tensor) or out.ndim != 2 or len(out) != len(probe):
        what = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelOutputError(f"model {name} returns {what} for {len(probe)} images of "
                               f"{shape}; expected logits of shape ({len(probe)}, "
                               f"{num_classes})")
    if out.shape[1] < num_classes or exact and out.shape[1] != num_classes:
        raise ModelOutputError(f"model {name} outputs {out.shape[1]} classes but the data has "
                               f"{num_classes}; give the factory the data's class count "
                               f"(e.g. kwargs = {{ num_classes = {num_classes} }})")


# ----------------------------------------------------------------------------- precision


class Autocast(nn.Module):
    """A model whose forward (and so its backward) runs under ``torch.autocast`` in
    ``dtype``; the logits come back as float32.

    Attacks on it see low-precision gradients; what they return is judged on the plain model
    in fp32 by the runner.

    Args:
        model: the fp32 model (not changed, not copied).
        dtype: ``torch.bfloat16`` or ``torch.float16``.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float()

    def extra_repr(self) -> str:
        return str(self.dtype)


def autocast(model: nn.Module, precision: str) -> nn.Module:
    """``model`` itself for ``"fp32"``, else wrapped in :class:`Autocast`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    return model if dtype is None else Autocast(model, dtype).eval()
