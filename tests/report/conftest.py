"""Fixtures of the report tests: a small run with robustness curves, shared by the page's
tests (test_html.py) and the browser's (test_browser.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advlab.evaluation import config_from_dict, run
from advlab.report import write_report
from conftest import make_tiny


@pytest.fixture(scope="session")
def curves_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with a robustness curve per defense (none, transformed), its report written."""
    a = make_tiny(0)
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = a(x).argmax(1)
    cfg = config_from_dict({
        "name": "curves", "batch_size": 20, "models": ["a"], "data": {"name": "x", "n": 20},
        "defenses": ["none", {"name": "transformed", "params": {
            "transforms": [{"name": "BitDepth", "bits": 3}]}}],
        "attacks": [{"name": "bim", "eps": [0.05, 0.1], "params": {"steps": 3},
                     "defenses": ["none"]}],
        "curves": [{"grid": [0.05, 0.1], "params": {"steps": 5},
                    "bounded_params": {"steps": 5}}],
        "report": {"eps": 0.1}, "sanity": {"enabled": False}, "adaptive": {"enabled": False}})
    root = tmp_path_factory.mktemp("runs")
    run(cfg, root=root, models={"a": a}, data=(x, y))
    write_report(root / "curves")
    return root / "curves"
