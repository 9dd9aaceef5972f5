"""Defenses by name, like :func:`advlab.attacks.get`: ``get(name, **params)`` builds a
*recipe* that turns a model into the defended model, with its place in a small taxonomy.

    recipe = advlab.defenses.registry.get("distillation", temperature=100, epochs=20)
    defended = recipe.build(model, train, seed=0)      # train() -> (x_train, y_train)

A recipe holds settings only; the model and the training data come at build time (loaded
lazily: a transformation defense needs no training data). Register a new defense with
:func:`register` on a class with that ``__init__(**params)`` / ``build`` pair.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from advlab import attacks
from advlab.defenses.distillation import distill
from advlab.defenses.training import adversarial_training
from advlab.defenses.transforms import Transformed
from advlab.errors import ConfigError, UnknownNameError
from advlab.transforms import TRANSFORMS, Transform

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
        UnknownNameError: no defense of that name.
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

    def __init__(self, attack: str = "pgd", attack_params: dict[str, Any] | None = None,
                 **fit: Any) -> None:
        self.attack, self.attack_params, self.fit = attack, dict(attack_params or {}), fit

    def build(self, model: nn.Module, train: TrainData, seed: int) -> nn.Module:
        atk = attacks.get(self.attack, **self.attack_params, seed=seed)
        return adversarial_training(model, *train(), attack=atk, **self.fit).eval()


@register("distillation", kind="training", trained=True, adaptive="c&w on the logits")
class Distillation:
    """Defensive distillation (:func:`~advlab.defenses.distill`); the student defends."""

    def __init__(self, **params: Any) -> None:
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
        self.layers = []
        for t in transforms or []:
            t = dict(t)
            name = t.pop("name", None)
            if name not in TRANSFORM_CLASSES:
                raise UnknownNameError("transform", str(name), list(TRANSFORM_CLASSES))
            self.layers.append((TRANSFORM_CLASSES[name], t))
        self.rest = rest

    def build(self, model: nn.Module, train: TrainData, seed: int) -> nn.Module:
        layers = [cls(**kw) for cls, kw in self.layers]
        return Transformed(model, layers, **{"seed": seed, **self.rest}).eval()
