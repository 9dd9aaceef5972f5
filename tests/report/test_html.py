"""report.html: every section present, figures embedded, re-rendered from the database, the
numbers of the tour's sections and of the robustness curves."""
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
from advlab.evaluation.store import Store
from advlab.report import html as H
from advlab.report import write_report

SECTIONS = ["summary", "robustness", "gallery", "defenses", "blackbox", "detectors", "transfer",
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


# ----------------------------------------------------------------------------- the tour's sections


@pytest.fixture(scope="module")
def tour_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run with what the default tour adds: a detector (naive and adaptive), a
    defense (naive and adaptive), a black-box attack, and a sanity finding's attack."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import make_tiny

    a = make_tiny(0)
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    x_tr = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y, y_tr = a(x).argmax(1), a(x_tr).argmax(1)
    cfg = config_from_dict({
        "name": "tour", "batch_size": 20, "models": ["a"], "data": {"name": "x", "n": 20},
        "defenses": ["none", {"name": "transformed", "params": {"transforms": [
            {"name": "BitDepth", "bits": 1}]}}],
        "detectors": [{"name": "activation-knn",
                       "params": {"layers": ["fc"], "k": 3, "surrogate_neighbours": 2}}],
        "attacks": [{"name": "fgsm", "eps": 0.3},
                    {"name": "square", "eps": 0.3, "params": {"max_queries": 40}, "n": 12,
                     "defenses": ["none"], "detectors": []}],
        "adaptive": {"steps": 5, "lam": 2.0},
        "sanity": {"max_examples": 10, "blackbox_queries": 20}, "report": {"eps": 0.3}})
    root = tmp_path_factory.mktemp("runs")
    run(cfg, root=root, models={"a": a}, data=(x, y), train_data=(x_tr, y_tr))
    write_report(root / "tour")
    return root / "tour"


def section(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}">')[1].split("</section>")[0]


def test_defense_rows_naive_vs_adaptive(tour_dir: Path) -> None:
    page = (tour_dir / "report.html").read_text()
    res = json.loads((tour_dir / "results.json").read_text())
    cells = {(c["defense"], c["label"]): c for c in res["cells"]}
    naive = cells[("transformed: BitDepth(bits=1)", "fgsm")]
    adaptive = cells[("transformed: BitDepth(bits=1)", "adaptive pgd on the BPDA/EOT surrogate")]
    plain = cells[("none", "fgsm")]
    assert naive["success_rate"] == 0.0 < adaptive["success_rate"]   # zero gradient vs BPDA
    sec = section(page, "defenses")
    gap = 100 * (naive["robust_accuracy"] - adaptive["robust_accuracy"])
    row = sec.split("<tr>")[-1]
    for v in (H.pct(naive["clean_accuracy"]), H.pct(plain["robust_accuracy"]),
              H.pct(naive["robust_accuracy"]), H.pct(adaptive["robust_accuracy"]),
              f"{gap:+.1f} pts"):
        assert v in row


def test_detector_rows_naive_and_adaptive(tour_dir: Path) -> None:
    page = (tour_dir / "report.html").read_text()
    res = json.loads((tour_dir / "results.json").read_text())
    scored = [c for c in res["cells"] if c["detectors"]]
    assert [(c["label"], c["adaptive"] is not None) for c in scored] == [
        ("fgsm", False), ("adaptive detector-aware-pgd vs activation-knn", True)]
    sec = section(page, "detectors")
    rows = sec.split("<tbody>")[1].split("<tr>")[1:]
    assert len(rows) == 2 and "naive" in rows[0] and "adaptive" in rows[1]
    for row, c in zip(rows, scored, strict=True):
        d = c["detectors"]["activation-knn"]
        assert H.num(d["auc"]) in row and H.pct(d["tpr_at_fpr"]) in row
        assert H.pct(d["undetected"]) in row
    assert len(pngs(sec)) == 1


def test_blackbox_queries_curve(tour_dir: Path) -> None:
    page = (tour_dir / "report.html").read_text()
    sec = section(page, "blackbox")
    assert "No black-box" not in sec and len(pngs(sec)) == 1
    from advlab.evaluation import Store

    with Store(tour_dir.parent / "advlab.sqlite") as s:
        res = json.loads((tour_dir / "results.json").read_text())
        c = next(c for c in res["cells"] if c["attack"] == "square")
        ex = s.examples(c["key"])
    fooled = ex["success"] & (ex["clean_pred"] == ex["label"])
    assert len(ex["idx"]) == 12 and (ex["queries"] > 0).all() and (ex["queries"] <= 40).all()
    assert c["median_queries"] == float(np.median(ex["queries"][fooled]))
    row = sec.split("<tbody>")[1]
    assert "square [n=12]" in row and ">40<" in row and H.num(c["median_queries"], 4) in row


def test_sanity_finding_runs_its_attack(tour_dir: Path) -> None:
    """1-bit depth zeroes the gradient: the gradients check fires on the defense, names PGD
    on the BPDA surrogate, and its result (a cell of its own) stands next to the finding."""
    page = (tour_dir / "report.html").read_text()
    res = json.loads((tour_dir / "results.json").read_text())
    groups = res["run"]["env"]["sanity"]
    defended = next(g for g in groups if g["defense"] != "none")
    fired = [f for f in defended["findings"] if f["level"] == "warning"]
    assert "gradients" in {f["check"] for f in fired} and all(f.get("cell") for f in fired)
    cell = next(c for c in res["cells"] if c["key"] == fired[0]["cell"])
    assert cell["adaptive"]["against"] == "sanity" and cell["n"] == 10
    assert cell["adaptive"]["surrogate"] is True
    row = next(r for r in section(page, "sanity").split("<tr>")
               if ">gradients<" in r and "transformed" in r)
    assert f"robust acc <b>{H.pct(cell['robust_accuracy'])}</b>" in row


# ------------------------------------------------------------------------ the robustness curves


def test_results_json_carries_the_curve(curves_dir: Path) -> None:
    res = json.loads((curves_dir / "results.json").read_text())
    curves = [c for c in res["cells"] if c.get("curve")]
    assert [c["defense"].split(":")[0] for c in curves] == ["none", "transformed"]
    with Store(curves_dir.parent / "advlab.sqlite") as s:
        for c in curves:
            k = c["curve"]
            assert (k["norm"], k["grid"], k["minnorm"], k["bounded"]) == (
                "linf", [0.05, 0.1], "fab", "apgd-ce")
            radii = s.examples(c["key"])["linf"]
            assert k["accuracy"] == pytest.approx([float((radii > e).mean()) for e in k["grid"]])
            assert len(k["eps"]) == len(k["dense"]) and k["eps"][-1] == 0.1
            assert all(np.diff(k["dense"]) <= 0) and k["dense"][0] == c["clean_accuracy"]


def test_the_page_draws_each_curve_with_its_grid(curves_dir: Path) -> None:
    page = (curves_dir / "report.html").read_text()
    sec = page.split('<section id="curves">')[1].split("</section>")[0]
    assert 'alt="robustness curves"' in sec
    assert sec.count("<tr>") == 1 + 2  # a row per curve
    res = json.loads((curves_dir / "results.json").read_text())
    for c in (c for c in res["cells"] if c.get("curve")):
        row = ", ".join(f"{e:g}: {100 * a:.1f}%"
                        for e, a in zip(c["curve"]["grid"], c["curve"]["accuracy"], strict=True))
        assert row in sec
