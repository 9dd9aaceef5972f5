"""The advlab command line, through click's CliRunner (digits data and the zoo's digits-mlp)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import advlab
from advlab.cli import cli
from advlab.evaluation import load_config, parse_config

TINY_TOML = """
name = "tiny"
batch_size = 50
[data]
name = "digits"
n = 50
[[models]]
name = "digits-mlp"
[[attacks]]
name = "fgsm"
eps = [0.1, 0.3]
[sanity]
enabled = false
"""


def invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


def test_list_prints_the_taxonomy() -> None:
    code, out = invoke("list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["attack", "knowledge", "goal", "norm", "kind", "bounded"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[2:]}
    assert set(rows) == set(advlab.attacks.available())
    for name, tax in advlab.attacks.available().items():
        assert rows[name] == [tax.knowledge, tax.goal, tax.norm, tax.kind,
                              "yes" if tax.bounded else "no"]


def test_unknown_attack_exits_2_with_the_list() -> None:
    code, out = invoke("attack", "nope", "-n", "5")
    assert code == 2
    assert "unknown attack 'nope'" in out and "Traceback" not in out
    for name in advlab.attacks.available():
        assert name in out


def test_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY_TOML + "\ncolour = 'red'\n")
    code, out = invoke("run", str(bad), "--root", str(tmp_path))
    assert code == 2 and "unknown key(s) ['colour']" in out and "Traceback" not in out
    code, out = invoke("report", str(tmp_path / "nothing"))
    assert code == 2 and "no results database" in out


def test_show_config_is_the_default_tour() -> None:
    code, out = invoke("run", "--show-config")
    assert code == 0
    assert parse_config(out) == load_config()


def test_run_then_cached_rerun_then_report(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    root = tmp_path / "runs"
    code, out = invoke("run", str(cfg), "--root", str(root), "--no-progress")
    assert code == 0, out
    assert "robust accuracy" in out and "eps=0.1" in out and "eps=0.3" in out
    run_dir = root / "tiny"
    res = json.loads((run_dir / "results.json").read_text())
    assert [c["eps"] for c in res["cells"]] == [0.1, 0.3] and res["missing"] == []
    assert res["cells"][0]["clean_accuracy"] > 0.8   # the zoo's digits model is trained
    assert res["cells"][1]["robust_accuracy"] < res["cells"][1]["clean_accuracy"]
    stamps = [c["finished"] for c in res["cells"]]
    code, out = invoke("run", str(cfg), "--root", str(root), "--no-progress")
    assert code == 0
    again = json.loads((run_dir / "results.json").read_text())
    assert [c["finished"] for c in again["cells"]] == stamps    # nothing recomputed
    (run_dir / "report.html").unlink()
    code, out = invoke("report", str(run_dir))
    assert code == 0 and (run_dir / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_attack_prints_table_and_gallery(tmp_path: Path) -> None:
    out_png = tmp_path / "g.png"
    code, out = invoke("attack", "pgd", "--model", "digits-mlp", "--data", "digits", "-n",
                       "30", "--eps", "0.3", "--param", "steps=5", "--out", str(out_png))
    assert code == 0, out
    assert "robust accuracy" in out and "steps=5" in out and "eps=0.3" in out
    assert out_png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("param", ["steps", "steps=", "=3"])
def test_attack_bad_param(param: str) -> None:
    code, out = invoke("attack", "pgd", "--param", param, "-n", "3")
    assert code == 2 and "Traceback" not in out


def test_attack_unknown_param() -> None:
    code, out = invoke("attack", "pgd", "--param", "colour=3", "-n", "3")
    assert code == 2 and "has no parameter 'colour'" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_is_a_clear_error() -> None:
    code, out = invoke("attack", "fgsm", "--device", "cuda", "-n", "3")
    assert code == 2 and "CUDA is not available" in out


def test_run_with_a_defense_prints_its_adaptive_row(tmp_path: Path) -> None:
    cfg = tmp_path / "def.toml"
    cfg.write_text(TINY_TOML + """
[[defenses]]
name = "none"
[[defenses]]
name = "transformed"
params = { transforms = [{ name = "BitDepth", bits = 1 }] }
[[attacks]]
name = "fgsm"
eps = 0.3
n = 20
defenses = ["transformed"]
""")
    code, out = invoke("run", str(cfg), "--root", str(tmp_path / "runs"), "--no-progress")
    assert code == 0, out
    res = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    defended = [(c["label"], c["eps"], c["n"]) for c in res["cells"] if c["defense"] != "none"]
    adaptive = "adaptive pgd on the BPDA/EOT surrogate"
    assert defended == [("fgsm", 0.1, 50), ("fgsm", 0.3, 50), ("fgsm [n=20]", 0.3, 20),
                        (adaptive, 0.1, 50), (adaptive, 0.3, 50), (adaptive + " [n=20]", 0.3, 20)]
    printed = [ln for ln in out.splitlines() if "transformed" in ln]
    grid = [ln for ln in printed if " / " not in ln]
    verdicts = [ln for ln in printed if " / " in ln]      # worst case over every attack
    assert len(grid) == 4 and any(adaptive + " [n=20]" in ln for ln in grid)
    assert len(verdicts) == 2 and "eps=0.3" in verdicts[1] and "[n=20]" in verdicts[1]


def test_run_with_a_curve_prints_its_line(tmp_path: Path) -> None:
    cfg = tmp_path / "curve.toml"
    cfg.write_text(TINY_TOML.replace("[sanity]", """[[curves]]
grid = [0.1, 0.3]
params = { steps = 3 }
bounded_params = { steps = 3 }
n = 20
[sanity]"""))
    code, out = invoke("run", str(cfg), "--root", str(tmp_path / "runs"), "--no-progress")
    assert code == 0, out
    res = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    (k,) = [c["curve"] for c in res["cells"] if c.get("curve")]
    head, line = out.split("\nrobustness curves (")[1].splitlines()[:2]
    assert "one minimum-norm run" in head
    assert line == (f"  digits-mlp / none: curve fab + apgd-ce [n=20] (linf): "
                    f"0.1: {100 * k['accuracy'][0]:.1f}%, 0.3: {100 * k['accuracy'][1]:.1f}%; "
                    f"never fooled {100 * k['robust']:.1f}%")


def test_scope_naming_an_unknown_defense_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(TINY_TOML + '[[attacks]]\nname = "pgd"\ndefenses = ["jpeg"]\n')
    code, out = invoke("run", str(cfg), "--root", str(tmp_path))
    assert code == 2 and "defenses names ['jpeg']" in out and "Traceback" not in out
