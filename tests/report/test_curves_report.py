"""The report's robustness curves: results.json carries each curve cell's curve, the page
draws one panel per model and defense with the grid marked, and Chromium renders it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import browser
from advlab.evaluation import config_from_dict, run
from advlab.evaluation.store import Store
from advlab.report import write_report
from conftest import make_tiny

WIDTH = 1280


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
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


def test_results_json_carries_the_curve(run_dir: Path) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    curves = [c for c in res["cells"] if c.get("curve")]
    assert [c["defense"].split(":")[0] for c in curves] == ["none", "transformed"]
    with Store(run_dir.parent / "advlab.sqlite") as s:
        for c in curves:
            k = c["curve"]
            assert (k["norm"], k["grid"], k["minnorm"], k["bounded"]) == (
                "linf", [0.05, 0.1], "fab", "apgd-ce")
            radii = s.examples(c["key"])["linf"]
            assert k["accuracy"] == pytest.approx([float((radii > e).mean()) for e in k["grid"]])
            assert len(k["eps"]) == len(k["dense"]) and k["eps"][-1] == 0.1
            assert all(np.diff(k["dense"]) <= 0) and k["dense"][0] == c["clean_accuracy"]


def test_the_page_draws_each_curve_with_its_grid(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    sec = page.split('<section id="curves">')[1].split("</section>")[0]
    assert 'alt="robustness curves"' in sec
    assert sec.count("<tr>") == 1 + 2  # a row per curve
    res = json.loads((run_dir / "results.json").read_text())
    for c in (c for c in res["cells"] if c.get("curve")):
        row = ", ".join(f"{e:g}: {100 * a:.1f}%"
                        for e, a in zip(c["curve"]["grid"], c["curve"]["accuracy"], strict=True))
        assert row in sec


def test_the_curves_render_in_chromium(run_dir: Path) -> None:
    if browser.find() is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium on PATH: the browser test must run in CI")
        pytest.skip("no Chromium on PATH (apt-get install -y chromium)")
    found = browser.check(run_dir / "report.html", run_dir / "curves.png", WIDTH)
    assert found["errors"] == []
    (im,) = [im for im in found["images"] if im["alt"] == "robustness curves"]
    assert "error" not in im and im["w"] > 200 and im["h"] > 100 and im["shown"] <= WIDTH
    assert found["page"] <= WIDTH
