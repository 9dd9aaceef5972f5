"""report.html in a real browser: headless Chromium at a 1280-pixel-wide window, for a grey
report (1 x 8 x 8), a colour report (the user's 3 x 32 x 32 network on a folder of PNGs) and a
224 x 224 colour report: no console errors, every image decoded, nothing wider than the
window; the screenshots are kept (their paths are printed; copied to $ADVLAB_ARTIFACTS when
set).

Needs Debian's ``chromium`` package (``apt-get install -y chromium``). Skipped where it is
missing, except under CI (``CI`` set), where a missing browser fails the test.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import browser
from advlab.evaluation import config_from_dict, run
from advlab.report import write_report
from userkit import Project, config

WIDTH = 1280

NET_224 = """
from torch import nn

def build(num_classes=10):
    return nn.Sequential(nn.AvgPool2d(8), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, num_classes))
"""


@pytest.fixture(scope="module", autouse=True)
def _chromium() -> None:
    if browser.find() is None:
        message = "no Chromium on PATH (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + ": the browser test must run in CI")
        pytest.skip(message)


def grey_report(root: Path) -> Path:
    from conftest import make_tiny

    a = make_tiny(0)
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = a(x).argmax(1)
    cfg = config_from_dict({
        "name": "grey", "batch_size": 20, "models": ["a"], "data": {"name": "x", "n": 20},
        "attacks": [{"name": "fgsm", "eps": [0.05, 0.2]},
                    {"name": "pgd", "eps": 0.2, "params": {"steps": 3}},
                    {"name": "square", "eps": 0.2, "params": {"max_queries": 20}}],
        "report": {"eps": 0.2}, "sanity": {"max_examples": 10, "blackbox_queries": 10}})
    run(cfg, root=root, models={"a": a}, data=(x, y))
    return write_report(root / "grey")[0]


def colour_report(root: Path, p: Project) -> Path:
    cfg_path = root / "colour.toml"
    cfg_path.write_text(config(p, f"folder:{p.folder}", "colour"))
    from advlab.evaluation import load_config

    run(load_config(cfg_path), root=root)
    return write_report(root / "colour")[0]


def large_report(root: Path, p: Project) -> Path:
    (root / "net224.py").write_text(NET_224)
    text = config(p, f"folder:{p.folder}", "large", n=6).replace(
        "n = 6", "n = 6\nresize = 224").replace(f'weights = "{p.weights}"', "").replace(
        f"{p.net}:build", f"{root / 'net224.py'}:build").replace(
        "batch_size = 20", "batch_size = 6")
    (root / "large.toml").write_text(text)
    from advlab.evaluation import load_config

    run(load_config(root / "large.toml"), root=root)
    return write_report(root / "large")[0]


@pytest.mark.parametrize("kind", ["grey", "colour", "large"])
def test_report_in_chromium(kind: str, tmp_path_factory: pytest.TempPathFactory,
                            user_project: Project) -> None:
    root = tmp_path_factory.mktemp(f"browser-{kind}")
    page = {"grey": lambda: grey_report(root), "colour": lambda: colour_report(root, user_project),
            "large": lambda: large_report(root, user_project)}[kind]()
    shot = root / f"report-{kind}.png"
    found = browser.check(page, shot, WIDTH)
    print(f"screenshot: {shot}")
    if os.environ.get("ADVLAB_ARTIFACTS"):
        out = Path(os.environ["ADVLAB_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / shot.name)
    assert found["errors"] == []
    assert found["images"], "no images in the report"
    for im in found["images"]:
        assert "error" not in im and im["w"] > 0 and im["h"] > 0, im
        assert im["shown"] <= WIDTH
    assert found["viewport"] == WIDTH
    assert found["page"] <= WIDTH, "the page scrolls sideways"
    for t in found["tables"]:
        assert t["right"] <= WIDTH, f"table {t['first']!r} runs past the window"
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
    if kind == "large":  # thumbnails: one gallery row of 2 x 3 panels fits the window
        gallery = [im for im in found["images"] if im["alt"].startswith("gallery")]
        assert gallery and all(im["w"] <= WIDTH for im in gallery)


def test_the_curves_render_in_chromium(curves_dir: Path) -> None:
    if browser.find() is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium on PATH: the browser test must run in CI")
        pytest.skip("no Chromium on PATH (apt-get install -y chromium)")
    found = browser.check(curves_dir / "report.html", curves_dir / "curves.png", WIDTH)
    assert found["errors"] == []
    (im,) = [im for im in found["images"] if im["alt"] == "robustness curves"]
    assert "error" not in im and im["w"] > 200 and im["h"] > 100 and im["shown"] <= WIDTH
    assert found["page"] <= WIDTH
