"""Detectors of adversarial examples, each fitted on one model (see detector.py; detection
rates, ROC and AUC in roc.py).

``advlab.detectors.ActivationKNN(layers=["fc1"], k=10).fit(model, x_tr, y_tr)``; then
``score(x)`` (higher = more adversarial), ``threshold(x_clean, fpr)``, ``detect(x)``.
By name: ``advlab.detectors.get("activation-knn", k=10)``; ``available()`` lists them.
MagNet lives with its reformer in :mod:`advlab.defenses.magnet`.
"""
from advlab.detectors import roc  # noqa: F401
from advlab.detectors.adaptive import DetectorAwarePGD  # noqa: F401
from advlab.detectors.combine import AnyOf  # noqa: F401
from advlab.detectors.detector import Detector, fingerprint, forward_with_activations  # noqa: F401
from advlab.detectors.distances import FeatureDistance  # noqa: F401
from advlab.detectors.knn import ActivationKNN, DeepKNN, knn_search  # noqa: F401
from advlab.detectors.lid import LID  # noqa: F401
from advlab.detectors.mahalanobis import Mahalanobis  # noqa: F401
from advlab.detectors.registry import available, get, register  # noqa: F401
from advlab.detectors.squeeze import FeatureSqueezing  # noqa: F401
from advlab.detectors.transformation import (  # noqa: F401
    DefensePerturbation,
    TransformationDetector,
    lecture_transforms,
)
from advlab.detectors.voting import Ensemble, NetworkVote  # noqa: F401
