"""Defenses by name, like :func:`advlab.attacks.get`: ``get(name, **params)`` builds a
*recipe* that turns a model into the defended model, with its place in a small taxonomy.

    recipe = advlab.defenses.registry.get("distillation", temperature=100, epochs=20)
    defended = recipe.build(model, train, seed=0)      # train() -> (x_train, y_train)

A recipe holds settings only, checked when it is made (an unknown or ill-typed parameter is
an error before any training); the model and the training data come at build time (loaded
lazily: a transformation defense needs no training data). Register a new defense with
:func:`register` on a class with that ``__init__(**params)`` / ``build`` pair.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from advlab import attacks
from advlab.defenses.distillation import distill
from advlab.defenses.training import (
    FitSettings,
    adversarial_training,
    fast_training,
    lecture_training,
    madry_training,
    trades_training,
)
from advlab.defenses.transformed import Transformed
from advlab.errors import ConfigError, UnknownNameError
from advlab.transforms import TRANSFORMS, Transform
from advlab.validation import check_kwargs

TrainData = Callable[[], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Taxonomy:
    """Where a defense sits.

    Attributes:
        kind: "training" (a retrained model) or "transformation" (a function in front of it).
        trained: True when building it trains a model (worth caching, see ``advlab run``).
        adaptive: the attack that tests it honestly (its ``adaptive()`` or the default).
    """

    kind: str
    trained: bool
    adaptive: str


_REGISTRY: dict[str, tuple[type, Taxonomy]] = {}


def register(name: str, *, kind: str, trained: bool, adaptive: str) -> Callable[[type], type]:
    """Class decorator: register a defense recipe under ``name`` with its taxonomy."""
    def deco(cls: type) -> type:
        if name in _REGISTRY or name == "none":
            raise ConfigError(f"defense name {name!r} registered twice (or reserved)")
        _REGISTRY[name] = (cls, Taxonomy(kind, trained, adaptive))
        return cls
    return deco


def get(name: str, **params: Any) -> Any:
    """The recipe of defense ``name`` with its parameters (not yet applied to a model).

    Raises:
        UnknownNameError: no defense of that name (or transform, or training method).
        ParameterError, ConfigError: a parameter it does not take, or of the wrong type.
    """
    if name not in _REGISTRY:
        raise UnknownNameError("defense", name, ["none", *_REGISTRY])
    return _REGISTRY[name][0](**params)


def available() -> dict[str, Taxonomy]:
    """Every registered defense name -> its taxonomy."""
    return {name: t for name, (_, t) in sorted(_REGISTRY.items())}


@register("adversarial-training", kind="training", trained=True,
          adaptive="pgd on the logit margin")
class AdversarialTraining:
    """:func:`~advlab.defenses.adversarial_training` with a registered attack (default
    PGD) built from ``attack`` and ``attack_params``; other params go to the training."""

    METHODS: dict[str, Callable[..., nn.Module]] = {
        "madry": madry_training, "trades": trades_training, "fast": fast_training,
        "lecture": lecture_training}

    def __init__(self, attack: str = "pgd", attack_params: dict[str, Any] | None = None,
                 **fit: Any) -> None:
        self.attack, self.attack_params, self.fit = attack, dict(attack_params or {}), fit
        attacks.get(attack, **self.attack_params)  # its name and parameters, checked
        method = fit.get("method", "madry")
        if method not in self.METHODS:
            raise UnknownNameError("adversarial training method", str(method),
                                   list(self.METHODS))
        fn, what = self.METHODS[method], f"defense 'adversarial-training' ({method})"
        own = set(inspect.signature(fn).parameters)
        rest = {k: v for k, v in fit.items() if k != "method"}
        check_kwargs(fn, {k: v for k, v in rest.items() if k in own}, what, skip=3)
        check_kwargs(FitSettings, {k: v for k, v in rest.items() if k not in own}, what)

    def build(self, model: nn.Module, train: TrainData, seed: int) -> nn.Module:
        atk = attacks.get(self.attack, **self.attack_params, seed=seed)
        return adversarial_training(model, *train(), attack=atk, **self.fit).eval()


@register("distillation", kind="training", trained=True, adaptive="c&w on the logits")
class Distillation:
    """Defensive distillation (:func:`~advlab.defenses.distill`); the student defends."""

    def __init__(self, **params: Any) -> None:
        check_kwargs(distill, params, "defense 'distillation'", skip=3)
        self.params = params

    def build(self, model: nn.Module, train: TrainData, seed: int) -> nn.Module:
        out = distill(model, *train(), **self.params)
        return (out[-1] if isinstance(out, tuple) else out).eval()  # (teacher, student)


#: the transformations a "transformed" defense names: registry names and class names
TRANSFORM_CLASSES: dict[str, type[Transform]] = {
    **TRANSFORMS, **{cls.__name__: cls for cls in TRANSFORMS.values()}}


@register("transformed", kind="transformation", trained=False, adaptive="bpda + eot")
class Transforms:
    """:class:`~advlab.defenses.Transformed`: ``transforms`` is a list of tables
    ``{name = "BitDepth", bits = 2}`` (names of :data:`TRANSFORM_CLASSES`); other params go
    to :class:`Transformed`."""

    def __init__(self, transforms: list[dict[str, Any]] | None = None, **rest: Any) -> None:
        ts = [] if transforms is None else transforms
        if not isinstance(ts, list) or not all(isinstance(t, dict) for t in ts):
            raise ConfigError("defense 'transformed': transforms must be a list of tables "
                              f"({{ name = \"BitDepth\", bits = 2 }}), got {ts!r}")
        check_kwargs(Transformed, rest, "defense 'transformed'", skip=2)
        self.layers = []
        for t in ts:
            t = dict(t)
            name = t.pop("name", None)
            if name not in TRANSFORM_CLASSES:
                raise UnknownNameError("transform", str(name), list(TRANSFORM_CLASSES))
            check_kwargs(TRANSFORM_CLASSES[name], t, f"transform {name!r}")
            self.layers.append((TRANSFORM_CLASSES[name], t))
        self.rest = rest

    def build(self, model: nn.Module, train: TrainData, seed: int) -> nn.Module:
        layers = [cls(**kw) for cls, kw in self.layers]
        return Transformed(model, layers, **{"seed": seed, **self.rest}).eval()
