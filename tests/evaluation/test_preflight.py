"""What a run checks before any work: names, meanings, folders, disks, models and images
(issue 17: run names that escape, values accepted with a wrong meaning, disk and permission
faults, the Python API's raw torch errors)."""
from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from tests.conftest import make_tiny

from advlab.cli import cli
from advlab.errors import AdvlabError, ConfigError, DataError, InputError, ModelModeError
from advlab.evaluation import config_from_dict, inputs, records, runner, store

CONFIG = {"name": "t", "batch_size": 24, "models": ["a"], "data": {"name": "x", "n": 24},
          "attacks": [{"name": "fgsm", "eps": 0.1}], "sanity": {"enabled": False}}


def one_cell_run(root: Path, **over: Any) -> dict[str, Any]:
    """A one-cell run of a Tiny model on 24 random 1x8x8 images (overrides: run()'s
    keywords)."""
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"models": {"a": make_tiny(0)}, "data": (x, torch.zeros(24, dtype=torch.long)),
          **over}
    return runner.run(config_from_dict(CONFIG), root=root, **kw)


def cells(root: Path) -> int:
    db = root / "advlab.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("SELECT count(*) FROM cells").fetchone()[0]


# ----------------------------------------------------------------------------- 2. run names


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "x" * 101, "a\0b", ".hidden"])
def test_name_flag_cannot_escape_the_root(tmp_path: Path, name: str) -> None:
    """`--name ..` once wrote report.html into the parent of --root; every bad name is
    now one line before anything is computed or written."""
    (tmp_path / "report.html").write_text("mine")
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "ok"\nmodels = ["a"]\nattacks = ["fgsm"]\n')
    res = CliRunner().invoke(cli, ["run", str(cfg), "--root", str(tmp_path / "runs"),
                                   "--name", name, "--no-progress"])
    assert res.exit_code == 2 and res.output.startswith("Error: --name must be")
    assert len(res.output.strip().splitlines()) == 1
    assert (tmp_path / "report.html").read_text() == "mine"
    assert not (tmp_path / "runs").exists()


def test_python_api_checks_the_name_too(tmp_path: Path) -> None:
    cfg = config_from_dict(CONFIG)
    cfg.name = ".."
    with pytest.raises(ConfigError, match="name must be a plain folder name"):
        runner.run(cfg, root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- 4. meanings


def test_data_n_beyond_the_split_is_an_error(tmp_path: Path) -> None:
    """data.n = 100000 was cut to the split's 1000 images without a word."""
    cfg = config_from_dict({**CONFIG, "data": {"name": "mnist5k", "n": 100000}})
    with pytest.raises(DataError, match="n = 100000 .* holds 1000"):
        runner.run(cfg, root=tmp_path, models={"a": make_tiny(0)})
    assert cells(tmp_path) == 0


def test_python_config_is_checked_like_a_file(tmp_path: Path) -> None:
    cfg = config_from_dict(CONFIG)
    cfg.noise = (float("nan"),)  # once an IntegrityError after every cell was computed
    with pytest.raises(ConfigError, match="noise"):
        runner.run(cfg, root=tmp_path)
    cfg = config_from_dict(CONFIG)
    cfg.sanity = {**cfg.sanity, "enabled": "no"}
    with pytest.raises(ConfigError, match="enabled"):
        runner.run(cfg, root=tmp_path)
    assert cells(tmp_path) == 0


# ----------------------------------------------------------------------------- 5. disks


def test_unwritable_root_fails_before_work(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match="cannot write the results folder"):
        one_cell_run(blocker / "runs")


def test_run_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("")
    with pytest.raises(DataError, match="run folder .* is a file"):
        one_cell_run(tmp_path)
    assert cells(tmp_path) == 0


def test_full_disk_fails_before_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1024, 1024))
    with pytest.raises(DataError, match="is full"):
        one_cell_run(tmp_path)
    assert cells(tmp_path) == 0


def test_unwritable_model_cache_fails_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An $ADVLAB_HOME that cannot be written once failed only after the model trained."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ADVLAB_HOME", str(blocker / "home"))
    trained = []
    monkeypatch.setattr(inputs, "load_model", lambda spec: trained.append(spec))
    cfg = config_from_dict({**CONFIG, "models": ["mnist-cnn"]})
    with pytest.raises(DataError, match=r"model cache \$ADVLAB_HOME"):
        runner.run(cfg, root=tmp_path / "runs")
    assert trained == []


class Faulty:
    """A connection that fails as SQLite does on a full disk at COMMIT."""

    def __init__(self, db: sqlite3.Connection, message: str, on: str) -> None:
        self.db, self.message, self.on = db, message, on

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith(self.on):
            raise sqlite3.OperationalError(self.message)
        return self.db.execute(sql, *args)


def test_full_disk_at_commit_is_said(tmp_path: Path) -> None:
    with store.Store(tmp_path / "db.sqlite") as s:
        s._db = Faulty(s._db, "database or disk is full", "COMMIT")
        with pytest.raises(DataError, match="is full .* rerun to resume"):
            s.begin_run("r", {}, {}, [])
        assert not s._db.in_transaction


def test_read_only_database_is_not_called_unusable(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A healthy database SQLite cannot write was called 'not a usable advlab results
    database ... move it away'."""
    path = tmp_path / "advlab.sqlite"
    store.Store(path).close()
    real = sqlite3.connect
    monkeypatch.setattr(store.sqlite3, "connect", lambda *a, **k: Faulty(
        real(*a, **k), "attempt to write a readonly database", "PRAGMA journal_mode"))
    with pytest.raises(DataError) as err:
        store.Store(path)
    assert "read-only" in str(err.value) and "not a usable" not in str(err.value)
    assert "intact" in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_read_only_run_folder(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t").chmod(0o500)
    try:
        with pytest.raises(DataError, match="cannot write the run folder"):
            one_cell_run(tmp_path)
    finally:
        (tmp_path / "t").chmod(0o700)


def test_full_disk_when_writing_the_report(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "fsync", full)
    with pytest.raises(DataError, match="No space left"):
        store.atomic_write(tmp_path / "report.html", "x")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- 8. Python API


def test_train_mode_model_raises_and_stays_in_train_mode(tmp_path: Path) -> None:
    model = make_tiny(0).train()
    with pytest.raises(ModelModeError, match="model 'a'.*train mode"):
        one_cell_run(tmp_path, models={"a": model})
    assert model.training and cells(tmp_path) == 0


@pytest.mark.parametrize("x", [torch.rand(24, 3, 8, 8), torch.rand(24, 1, 32, 32),
                               torch.rand(24, 1, 8, 8, dtype=torch.float64)])
def test_images_the_model_does_not_take(tmp_path: Path, x: torch.Tensor) -> None:
    with pytest.raises(InputError, match="model 'a' has torch.float32 weights|model a rejects "
                                         "the data's"):
        one_cell_run(tmp_path, data=(x, torch.zeros(24, dtype=torch.long)))
    assert cells(tmp_path) == 0


def test_a_good_run_still_runs(tmp_path: Path) -> None:
    rec = one_cell_run(tmp_path)
    assert len(rec["cells"]) == 1 and cells(tmp_path) == 1


@pytest.mark.parametrize("params, match", [
    ({"steps": 2.5}, "steps must be an integer"), ({"steps": "abc"}, "steps must be"),
    ({"colour": 1}, "has no parameter 'colour'"), ({"eps": float("nan")}, "not NaN"),
])
def test_attack_parameters_are_advlab_errors(params: dict[str, Any], match: str) -> None:
    from advlab import attacks

    with pytest.raises(AdvlabError, match=match):
        attacks.get("pgd", **params)


def test_bad_attack_params_in_a_config_fail_before_any_cell(tmp_path: Path) -> None:
    bad = {**CONFIG, "attacks": [{"name": "pgd", "eps": 0.1, "params": {"steps": 2.5}}]}
    with pytest.raises(ConfigError, match=r"attacks\[0\] \(pgd\).*steps"):
        runner.run(config_from_dict(bad), root=tmp_path, models={"a": make_tiny(0)})
    assert cells(tmp_path) == 0
