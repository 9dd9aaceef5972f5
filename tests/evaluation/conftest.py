"""Fixtures of the evaluation tests."""
from __future__ import annotations

import pytest
from tests.conftest import make_tiny

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
