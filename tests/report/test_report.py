"""report.html: every section present, figures embedded, re-rendered from the database."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from advlab.errors import DataError
from advlab.evaluation import config_from_dict, run
from advlab.report import html as H
from advlab.report import plots, write_report

SECTIONS = ["summary", "robustness", "gallery", "blackbox", "detectors", "transfer",
            "properties", "sanity", "environment"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import make_tiny

    a, b = make_tiny(0), make_tiny(1)
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = a(x).argmax(1)
    cfg = config_from_dict({
        "name": "rep", "batch_size": 20, "models": ["a", "b"], "data": {"name": "x", "n": 20},
        "attacks": [{"name": "fgsm", "eps": [0.05, 0.2]}, {"name": "bim", "eps": [0.05, 0.2],
                                                           "params": {"steps": 3}}],
        "report": {"eps": 0.2}, "sanity": {"max_examples": 20, "blackbox_queries": 20}})
    root = tmp_path_factory.mktemp("runs")
    run(cfg, root=root, models={"a": a, "b": b}, data=(x, y))
    write_report(root / "rep")
    return root / "rep"


def pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"',
                                                     page)]


def test_sections_and_embedded_images(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    images = pngs(page)
    assert len(images) >= 4    # robustness, one gallery per model, transfer
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images)
    assert "<script" not in page and 'src="http' not in page and "<link" not in page
    # sections without data say so
    assert "No black-box" in page and "No detectors in this run" in page
    # the real advlab.evaluation.sanity ran on both models at the reference eps
    sanity = page.split('<section id="sanity">')[1].split("</section>")[0]
    for check in ("softmax", "randomness", "gradients", "one-step-vs-iterative", "unbounded"):
        assert check in sanity
    # summary table rows: 2 models x 2 attacks x 2 eps
    summary = page.split('<section id="summary">')[1].split("</section>")[0]
    assert summary.count("<tr>") == 1 + 8


def test_numbers_in_report_match_results(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    res = json.loads((run_dir / "results.json").read_text())
    for c in res["cells"]:
        assert H.pct(c["robust_accuracy"]) in page
    assert res["run"]["name"] == "rep"


def test_rerender_from_database(run_dir: Path) -> None:
    before = (run_dir / "report.html").read_text()
    (run_dir / "report.html").unlink()
    (run_dir / "results.json").unlink()
    html, results = write_report(run_dir)
    assert html.read_text() == before and json.loads(results.read_text())["cells"]


def test_missing_database(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no results database"):
        write_report(tmp_path / "nothing")


def test_reference_eps() -> None:
    def cell(model: str, eps: float, success: float) -> dict:
        return {"model": model, "eps": eps, "success_rate": success, "params": {},
                "attack": "fgsm"}
    cells = [cell("a", 0.1, 0.3), cell("a", 0.2, 0.9), cell("b", 0.1, 0.7),
             cell("b", 0.2, 0.6), cell("a", 0.3, 1.0), cell("b", 0.3, 1.0)]
    assert H.reference_eps(cells) == 0.2          # first eps where every model is >= 50%
    weak = [cell("a", 0.1, 0.3), cell("a", 0.2, 0.9), cell("b", 0.1, 0.2), cell("b", 0.2, 0.4)]
    assert H.reference_eps(weak) == 0.2           # never: the largest eps
    assert H.reference_eps(cells, override=0.1) == 0.1
    assert H.reference_eps([]) is None


def test_plots_are_pngs() -> None:
    rng = np.random.default_rng(0)
    item = plots.GalleryItem(rng.random((3, 8, 8)), rng.random((3, 8, 8)), 1, 1, 0.96, 2, 0.92)
    for png in (plots.gallery([("pgd", [item, item])], ["cat", "dog", "car"]),
                plots.lines([("m", [plots.Curve("a", [0, 1], [1, 0])])], "x", "y"),
                plots.heatmaps([("t", ["a", "b"], ["a", "b"], np.array([[1, np.nan],
                                                                         [0.2, 0.5]]))],
                               "target", "source")):
        assert png.startswith(b"\x89PNG")


def test_sanity_section_lists_warnings_first() -> None:
    groups = [{"model": "m", "defense": "none", "eps": 0.1, "findings": [
        {"check": "softmax", "level": "ok", "message": "logits <ok>"},
        {"check": "unbounded", "level": "warning", "message": "PGD fails",
         "attack": "apgd-dlr", "attack_kwargs": {"steps": 100}, "on_surrogate": True}]}]
    ctx = H.Context(None, {"run": {"env": {"sanity": groups}}}, 0.1, None)  # type: ignore[arg-type]
    out = H.section_sanity(ctx)
    assert "1 warning(s)" in out and "apgd-dlr(steps=100) on the BPDA/EOT surrogate" in out
    assert out.index("unbounded") < out.index("softmax") and "logits &lt;ok&gt;" in out
    ctx.results["run"]["env"]["sanity"] = []
    assert "No sanity checks" in H.section_sanity(ctx)
