"""Screenshots of a real report: a defense whose findings the ladder settled, and one it left
open (docs/img/report_verdicts.png, docs/img/report_sanity.png).

A small ``advlab run`` (MNIST test images the defenses classify correctly, Linf eps 0.3, PGD-20
as the naive attack) on two masked defenses of tests/masked_suite.py around the zoo's
mnist-cnn: bit-depth-2 (the ladder's BPDA rung breaks it: settled) and squeeze-detector
(only score-based search gets through its detector: its gradient findings stay open, so the
figure is marked unreliable in red). The report is opened in headless Chromium through the
test kit (tests/browser.py) and its verdicts and sanity sections are captured.

Usage: python benchmarks/report_screenshots.py [--n 24] [--out docs/img]
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import advlab  # noqa: E402
import browser  # noqa: E402
import masked_suite  # noqa: E402
from advlab.evaluation import ladder, runner  # noqa: E402
from advlab.evaluation.config import config_from_dict  # noqa: E402
from advlab.report.html import write_report  # noqa: E402

MEMBERS = ("bit-depth-2", "squeeze-detector")

RECT = """(() => {{ const r = document.getElementById("{sid}").getBoundingClientRect();
  return {{x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width,
          height: r.height}}; }})()"""


def shoot(page: browser.Page, sid: str, path: Path) -> None:
    """A PNG of the report section ``sid``."""
    r = page.evaluate(RECT.format(sid=sid))
    shot = page.browser.send("Page.captureScreenshot", page.session, format="png",
                             captureBeyondViewport=True, clip={**r, "scale": 1})
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {path} ({int(r['width'])} x {int(r['height'])})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = ap.parse_args()
    torch.manual_seed(0)
    x_tr, y_tr = advlab.data.load("mnist5k", split="train")
    x_te, y_te = advlab.data.load("mnist5k", split="test")
    suite = {m.name: m for m in masked_suite.build(advlab.zoo.load("mnist-cnn"), x_tr[:1000],
                                                   y_tr[:1000], steps=20)}
    models = {name: suite[name].model for name in MEMBERS}
    ok = torch.ones(200, dtype=torch.bool)
    for m in models.values():
        ok &= ~ladder.judge(m, x_te[:200], y_te[:200])
    x, y = x_te[:200][ok][:args.n], y_te[:200][ok][:args.n]
    cfg = config_from_dict({
        "name": "masked-report", "batch_size": 64, "models": list(models),
        "data": {"name": "mnist-masked", "n": len(x)},
        "attacks": [{"name": "pgd", "eps": 0.3, "params": {"steps": 20}}],
        "report": {"gallery": 4, "eps": 0.3}, "workers": 1,
        "sanity": {"enabled": True, "max_examples": len(x), "blackbox_queries": 300,
                   "ladder_steps": 50, "ladder_square_queries": 300,
                   "ladder_label_queries": 0, "ladder_distill_epochs": 0}})
    root = Path(tempfile.mkdtemp(prefix="advlab-shots-"))
    runner.run(cfg, root=root, models=models, data=(x, y), train_data=(x_tr, y_tr))
    write_report(root / cfg.name)
    res = json.loads((root / cfg.name / "results.json").read_text())
    for v in res.get("verdicts") or []:
        print(v["model"], v["eps"], v["verdict"], v["robust_accuracy"], v["findings"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with browser.Chromium() as chrome:
        page = chrome.open(root / cfg.name / "report.html", width=1280)
        shoot(page, "verdicts", out / "report_verdicts.png")
        shoot(page, "sanity", out / "report_sanity.png")
        assert not page.errors, page.errors


if __name__ == "__main__":
    main()
