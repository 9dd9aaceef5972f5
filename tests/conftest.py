"""Shared fixtures: the embedded data and the zoo models, built once per test session.

The zoo models train on first use and are cached under $ADVLAB_HOME, so a fresh machine pays
the training once (a few tens of seconds) and later runs load them.
"""
from __future__ import annotations

import os

# Idle OpenMP threads spin by default: on a loaded 2-core machine that makes small models
# 10-100x slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    """One intra-op thread: the tests' tensors are small, and extra threads only add contention
    (measured 10-30x slower with two threads on a loaded 2-core machine)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    import advlab

    return advlab.data.load("mnist5k", split="test")


@pytest.fixture(scope="session")
def mnist_train() -> tuple[torch.Tensor, torch.Tensor]:
    import advlab

    return advlab.data.load("mnist5k", split="train")


@pytest.fixture(scope="session")
def mlp() -> nn.Module:
    import advlab

    return advlab.zoo.load("mnist-mlp")


@pytest.fixture(scope="session")
def cnn() -> nn.Module:
    import advlab

    return advlab.zoo.load("mnist-cnn")


class Tiny(nn.Module):
    """1x8x8 -> 10 classes with a conv, a BatchNorm (buffers to watch) and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def make_tiny(seed: int = 0) -> nn.Module:
    """A seeded Tiny model in eval mode with non-trivial BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    model = Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.bn.running_mean.copy_(torch.randn(4, generator=g) * 0.1)
        model.bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
    return model.eval()


@pytest.fixture
def tiny() -> nn.Module:
    return make_tiny()


@pytest.fixture
def tiny_factory():  # noqa: ANN201
    """make_tiny(seed) -> a fresh seeded Tiny model in eval mode."""
    return make_tiny


@pytest.fixture(scope="session")
def user_project(tmp_path_factory: pytest.TempPathFactory):  # -> userkit.Project
    """The example's own 3 x 32 x 32 network, trained and saved, with its images in a folder of
    PNGs, CIFAR-10 binary batches and an .npz file (see tests/userkit.py)."""
    import userkit

    return userkit.make(tmp_path_factory.mktemp("user"))
