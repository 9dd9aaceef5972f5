"""The advlab command line, through click's CliRunner (digits data and the zoo's digits-mlp);
then its errors: `advlab run`, `attack` and `report` answer every advlab error with one line
and exit code 2, before any work."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import advlab
from advlab.cli import cli
from advlab.evaluation import load_config, parse_config
from advlab.zoo import build, save

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


# ------------------------------------------------------------------- errors: one line, exit code 2


def one_line(*args: str) -> str:
    """Run the CLI; it must fail with one ``Error:`` line and exit code 2."""
    res = CliRunner().invoke(cli, list(args))
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


# --------------------------------------------------------------------------------------- run errors


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b'name = "\xff\xfe"\n')
    assert "not a UTF-8 text file" in one_line("run", str(cfg), "--root", str(tmp_path))


@pytest.mark.parametrize("extra, match", [
    ('[[defenses]]\nname = "transformed"\nparams = { transforms = [{ name = "Nope" }] }',
     "unknown transform 'Nope'"),
    ('[[defenses]]\nname = "transformed"\n'
     'params = { transforms = [{ name = "BitDepth", bits = "two" }] }', "bits must be"),
    ('[[detectors]]\nname = "deep-knn"\nparams = { layers = ["fc2"], colour = 1 }',
     "has no parameter 'colour'"),
    ('device = "tpu"', "device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
])
def test_run_builds_everything_first(tmp_path: Path, extra: str, match: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "x"\nmodels = ["digits-mlp"]\n'
                   'attacks = [{ name = "fgsm", eps = 0.1 }]\n' + extra)
    assert match in one_line("run", str(cfg), "--root", str(tmp_path / "runs"),
                             "--no-progress")
    assert not (tmp_path / "runs" / "advlab.sqlite").exists()


# ------------------------------------------------------------------------------------ attack errors


@pytest.mark.parametrize("args, match", [
    (["--param", "steps=2.5"], "steps must be an integer"),
    (["--param", "steps=abc"], "steps must be an integer, got 'abc'"),
    (["--param", "eps=nan"], "eps must be"),
    (["--param", 'eps="0.1"'], "eps must be"),
    (["--param", "colour=1"], "has no parameter 'colour'"),
    (["--eps", "nan"], "not NaN"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--data", "mnist5k"], "rejects the data's 1x28x28 images"),      # digits-mlp is 8x8
    (["-n", "5000"], "n = 5000 images asked of digits test"),
])
def test_attack_errors(args: list[str], match: str) -> None:
    msg = one_line("attack", "pgd", "--model", "digits-mlp", "--data", "digits", "-n", "8",
                   *args)
    assert match in msg


def test_attack_out_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    msg = one_line("attack", "fgsm", "--model", "digits-mlp", "--data", "digits", "-n", "8",
                   "--out", str(blocker / "g.png"))
    assert "cannot write the folder of --out" in msg


def test_attack_checks_the_model_cache_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ADVLAB_HOME", str(blocker / "home"))
    msg = one_line("attack", "fgsm", "--model", "digits-mlp", "--data", "digits", "-n", "8",
                   "--out", str(tmp_path / "g.png"))
    assert r"cannot write the model cache $ADVLAB_HOME" in msg


def test_attack_weights_named_safetensors_but_torch_save(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    torch.save(build("digits-mlp").state_dict(), path)
    msg = one_line("attack", "fgsm", "--model", "digits-mlp", "--weights", str(path),
                   "--data", "digits", "-n", "8")
    assert "named .safetensors but holds a zip archive (what torch.save writes)" in msg


def test_attack_weights_good_file_still_loads(tmp_path: Path) -> None:
    path = save(build("digits-mlp"), tmp_path / "w.safetensors")
    res = CliRunner().invoke(cli, ["attack", "fgsm", "--model", "digits-mlp", "--weights",
                                   str(path), "--data", "digits", "-n", "8", "--out",
                                   str(tmp_path / "g.png")])
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------------ report errors


def test_report_does_not_turn_a_file_into_a_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert "not an advlab results database (an empty file)" in one_line(
        "report", str(tmp_path / "run"), "--db", str(empty))
    assert empty.read_bytes() == b""


def test_report_refuses_another_sqlite_file(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (a)")
    size = os.path.getsize(other)
    assert "without advlab's tables" in one_line("report", str(tmp_path / "run"), "--db",
                                                  str(other))
    assert os.path.getsize(other) == size
