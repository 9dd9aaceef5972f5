"""The detector registry (detectors/registry.py): each name's taxonomy, names registered once,
and get() building the registered class with its parameters."""
from __future__ import annotations

import pytest

from advlab import detectors
from advlab.detectors import registry
from advlab.errors import ConfigError, ParameterError, UnknownNameError


def test_taxonomy_of_every_detector() -> None:
    """(evidence, supervised, differentiable): what the runner's adaptive cells rely on."""
    got = {name: (t.evidence, t.supervised, t.differentiable)
           for name, t in detectors.available().items()}
    assert got == {
        "activation-knn": ("activations", False, True),
        "deep-knn": ("activations", False, True),
        "mahalanobis": ("activations", True, True),
        "feature-distance": ("learned", True, True),
        "lid": ("learned", True, True),
        "feature-squeezing": ("transformations", False, True),
        "transformation-detector": ("transformations", False, True),
    }


def test_a_name_is_registered_once() -> None:
    before = detectors.available()
    with pytest.raises(ConfigError, match="detector name 'lid' registered twice"):
        registry.register("lid", evidence="learned")(detectors.ActivationKNN)
    assert detectors.available() == before
    assert registry.detector_class("lid") is detectors.LID


def test_get_builds_the_registered_class() -> None:
    det = detectors.get("deep-knn", k=5)
    assert type(det) is detectors.DeepKNN and det.k == 5
    with pytest.raises(UnknownNameError, match="available: activation-knn, deep-knn"):
        detectors.get("nope")
    with pytest.raises(ParameterError, match="detector 'deep-knn' has no parameter 'kk'"):
        detectors.get("deep-knn", kk=5)


def test_detectors_by_name() -> None:
    """A detector's parameters are checked by get(), before any fit."""
    assert detectors.available()["lid"].supervised
    assert detectors.available()["activation-knn"].differentiable
    assert isinstance(detectors.get("activation-knn", k=3), detectors.ActivationKNN)
    with pytest.raises(ParameterError, match="detector 'lid' has no parameter 'kk'"):
        detectors.get("lid", kk=3)
