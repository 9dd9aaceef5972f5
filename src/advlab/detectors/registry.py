"""Detectors by name, like :func:`advlab.attacks.get`: ``get(name, **params)`` builds an
unfitted detector; :func:`available` gives each name's place in a small taxonomy.

    det = advlab.detectors.registry.get("activation-knn", layers=["fc1"], k=10)
    det.fit(model, x_train, y_train)

Register a new detector (a :class:`~advlab.detectors.Detector` subclass) with
:func:`register`; its ``supervised`` and ``differentiable`` flags enter the taxonomy.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from advlab.detectors.detector import Detector
from advlab.detectors.distances import FeatureDistance
from advlab.detectors.knn import ActivationKNN, DeepKNN
from advlab.detectors.lid import LID
from advlab.detectors.mahalanobis import Mahalanobis
from advlab.detectors.squeeze import FeatureSqueezing
from advlab.detectors.transformation import TransformationDetector
from advlab.errors import ConfigError, UnknownNameError
from advlab.validation import check_kwargs


@dataclass(frozen=True)
class Taxonomy:
    """Where a detector sits.

    Attributes:
        evidence: what it looks at: "activations" (the model's hidden layers), "learned" (a
            classifier over activation features) or "transformations" (the model's outputs
            on transformed inputs).
        supervised: its fit needs adversarial examples.
        differentiable: it has a differentiable score, so the runner attacks it adaptively
            (:class:`~advlab.detectors.DetectorAwarePGD`).
    """

    evidence: str
    supervised: bool
    differentiable: bool


_REGISTRY: dict[str, tuple[type[Detector], Taxonomy]] = {}


def register(name: str, *, evidence: str) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator: register a detector class under ``name``."""
    def deco(cls: type[Detector]) -> type[Detector]:
        if name in _REGISTRY:
            raise ConfigError(f"detector name {name!r} registered twice")
        _REGISTRY[name] = (cls, Taxonomy(evidence, bool(getattr(cls, "supervised", False)),
                                         bool(getattr(cls, "differentiable", False))))
        return cls
    return deco


def detector_class(name: str) -> type[Detector]:
    """The class registered under ``name``.

    Raises:
        UnknownNameError: no detector of that name.
    """
    if name not in _REGISTRY:
        raise UnknownNameError("detector", name, list(_REGISTRY))
    return _REGISTRY[name][0]


def get(name: str, **params: Any) -> Detector:
    """An unfitted detector ``name`` with its parameters.

    Raises:
        UnknownNameError: no detector of that name.
        ParameterError: a parameter it does not take, or of the wrong type.
    """
    cls = detector_class(name)
    check_kwargs(cls, params, f"detector {name!r}")
    return cls(**params)


def available() -> dict[str, Taxonomy]:
    """Every registered detector name -> its taxonomy."""
    return {name: t for name, (_, t) in sorted(_REGISTRY.items())}


for _name, _cls, _evidence in (
        ("activation-knn", ActivationKNN, "activations"),
        ("deep-knn", DeepKNN, "activations"),
        ("mahalanobis", Mahalanobis, "activations"),
        ("feature-distance", FeatureDistance, "learned"),
        ("lid", LID, "learned"),
        ("feature-squeezing", FeatureSqueezing, "transformations"),
        ("transformation-detector", TransformationDetector, "transformations")):
    register(_name, evidence=_evidence)(_cls)
