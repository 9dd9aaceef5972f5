"""Fixtures of the evaluation tests."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import make_tiny
from torch import Tensor

import advlab
import masked_suite
from advlab.evaluation import runner
from testkit import tiny_config, tiny_setup


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """One run of tiny_config, shared: (root, models, data, run record, state before)."""
    models, (x, y) = tiny_setup(make_tiny)
    before = {k: [p.clone() for p in m.state_dict().values()] for k, m in models.items()}
    root = tmp_path_factory.mktemp("tiny")
    rec = runner.run(tiny_config(), root=root, models=models, data=(x, y))
    return root, models, (x, y), rec, before


@pytest.fixture(scope="session")
def mnist100(mnist_test) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    """The first 100 MNIST test images and labels (the sanity checks' data)."""
    x, y = mnist_test
    return x[:100], y[:100]


@pytest.fixture(scope="session")
def suite(mnist_train, cnn):  # noqa: ANN001, ANN201
    """The masked suite (tests/masked_suite.py) around the zoo's mnist-cnn, by member name."""
    torch.manual_seed(0)
    x, y = mnist_train
    return {m.name: m for m in masked_suite.build(cnn, x[:1000], y[:1000], steps=20)}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A local Ray cluster of 2 CPUs whose workers import this advlab; shut down after the
    module (a forked process pool must not inherit a Ray driver). Skipped without Ray."""
    ray = pytest.importorskip("ray")
    src = str(Path(advlab.__file__).parents[1])
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": src, "OMP_WAIT_POLICY": "PASSIVE"}})
    yield ray
    ray.shutdown()
