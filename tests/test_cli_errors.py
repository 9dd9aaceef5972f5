"""`advlab run`, `attack` and `report` answer every advlab error with one line and exit
code 2, before any work (issue 17: tracebacks, some only after the work was done)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from advlab.cli import cli
from advlab.zoo import build, save


def one_line(*args: str) -> str:
    """Run the CLI; it must fail with one ``Error:`` line and exit code 2."""
    res = CliRunner().invoke(cli, list(args))
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


# ----------------------------------------------------------------------------- 3. run


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


# ----------------------------------------------------------------------------- 9. attack


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


# ----------------------------------------------------------------------------- 10. report


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
