"""Fixtures for the detector tests: seeded 1 x 8 x 8 data labelled by the Tiny model, and one
small configuration of every detector (fast to fit)."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from advlab.attacks import FGSM
from advlab.defenses.magnet import MagNet
from advlab.detectors import (
    LID,
    ActivationKNN,
    AnyOf,
    DeepKNN,
    DefensePerturbation,
    Detector,
    FeatureDistance,
    FeatureSqueezing,
    Mahalanobis,
    NetworkVote,
    TransformationDetector,
)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def data(tiny_factory) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train 120, y_train = the Tiny model's labels, x_clean 60 for calibration)."""
    model = tiny_factory(0)
    x = images(120, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y, images(60, 2)


def _fgsm() -> list:
    return [FGSM(eps=0.3)]


FACTORIES: dict[str, Callable[[Callable[[int], nn.Module]], Detector]] = {
    "knn": lambda mk: ActivationKNN(["conv"], k=3),
    "dknn": lambda mk: DeepKNN(["conv", "fc"], k=3, calibration=20),
    "fdist": lambda mk: FeatureDistance(["conv", "fc"], hidden=4, attacks=_fgsm(), n_adv=40,
                                        epochs=20),
    "lid": lambda mk: LID(["conv", "fc"], k=3, reference=20, attacks=_fgsm(), n_adv=40,
                          epochs=20),
    "maha": lambda mk: Mahalanobis(["conv", "fc"], noise=0.01, attacks=_fgsm(), n_adv=40,
                                   epochs=20),
    "squeeze": lambda mk: FeatureSqueezing(),
    "transforms": lambda mk: TransformationDetector(samples=2, batch_size=25),
    "defense": lambda mk: TransformationDetector(
        samples=1, defense=DefensePerturbation(eps=0.05, steps=2)),
    "vote": lambda mk: NetworkVote([mk(1), mk(2)]),
    "anyof": lambda mk: AnyOf([FeatureSqueezing(), ActivationKNN(["fc"], k=3)]),
    "magnet": lambda mk: MagNet(epochs=1, components=("l1", "l2", "jsd10")),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests taking ``detector_name`` run once per detector configuration."""
    if "detector_name" in metafunc.fixturenames:
        metafunc.parametrize("detector_name", sorted(FACTORIES))


@pytest.fixture
def make_detector(tiny_factory) -> Callable[[str], Detector]:
    """name -> a fresh, unfitted detector of that configuration."""
    return lambda name: FACTORIES[name](tiny_factory)


@pytest.fixture
def by_hand(tiny_factory) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model, x 100, y = the model's labels, xt 20): the data of the detectors' numbers
    recomputed by hand."""
    model = tiny_factory(0)
    x, xt = images(100, 1), images(20, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, xt


@pytest.fixture
def more_images() -> Callable[[int, int], torch.Tensor]:
    """(n, seed) -> n seeded random 1 x 8 x 8 images."""
    return images
