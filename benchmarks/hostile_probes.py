"""The probes of issue 17 (items 2-6 and 8-10), replayed: does each now end in one clean
line of error (exit code 2, no traceback) or an advlab error from the Python API?

    PYTHONPATH=src python benchmarks/hostile_probes.py

CLI probes run in-process (click's CliRunner) except those that need a read-only or full
file system: these run ``advlab`` in a real process inside ``unshare -rm`` with a read-only
bind mount or a small tmpfs (Linux; they are reported as skipped where unshare is refused).
A disk that fills up during the run (at COMMIT, when the report is written) is played by
SQLite's and the OS's own errors raised from the database connection and ``os.fsync``.
Models come from the zoo cache (mnist-cnn, digits-mlp: trained on first use).
"""
from __future__ import annotations

import errno
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from click.testing import CliRunner

import advlab
from advlab.cli import cli
from advlab.errors import AdvlabError
from advlab.evaluation import records, store

TOML = """name = "{name}"
seed = {seed}
batch_size = 8
workers = 1
[data]
name = "{data}"
n = {n}
[[models]]
name = "{model}"
[[attacks]]
name = "fgsm"
eps = 0.1
params = {params}
{extra}
[sanity]
enabled = false
[adaptive]
enabled = false
"""

WORK = Path(tempfile.mkdtemp(prefix="advlab-probes-"))


def toml(**kw: object) -> Path:
    """A tiny configuration file, with fields replaced (``raw``: the whole text)."""
    fields = {"name": "p", "seed": 0, "data": "mnist5k", "n": 8, "model": "mnist-cnn",
              "params": "{}", "extra": "", **kw}
    path = Path(tempfile.mkdtemp(dir=WORK)) / "c.toml"
    path.write_text(TOML.format(**fields))
    return path


def clean_cli(*args: str) -> tuple[bool, str]:
    """In-process CLI: exit 2, one line starting with Error:, no exception escaped."""
    res = CliRunner().invoke(cli, list(args))
    lines = res.output.strip().splitlines()
    ok = res.exit_code == 2 and isinstance(res.exception, SystemExit) and len(lines) == 1 \
        and lines[0].startswith("Error: ")
    return ok, lines[-1] if lines else repr(res.exception)


def clean_process(cmd: str, setup: str = "") -> tuple[bool, str] | None:
    """``advlab`` in a real process in a private mount namespace (None: no unshare here)."""
    if shutil.which("unshare") is None:
        return None
    script = f"set -e; {setup}; {shlex.quote(sys.executable)} -m advlab.cli {cmd}"
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                         timeout=600)
    if "unshare:" in res.stderr or "mount:" in res.stderr:
        return None
    out = (res.stdout + res.stderr).strip().splitlines()
    ok = res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and \
        res.stderr.startswith("Error: ") and "Traceback" not in res.stderr
    return ok, out[-1] if out else ""


def clean_api(fn: Callable[[], object]) -> tuple[bool, str]:
    try:
        fn()
    except AdvlabError as exc:
        return "\n" not in str(exc), f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a probe reports what escaped
        return False, f"{type(exc).__name__}: {exc}"
    return False, "no error"


def run(*args: str) -> tuple[bool, str]:
    return clean_cli("run", *args, "--root", str(Path(tempfile.mkdtemp(dir=WORK)) / "runs"),
                     "--no-progress")


def attack(*args: str) -> tuple[bool, str]:
    return clean_cli("attack", "pgd", "-n", "8", "--out", str(WORK / "g.png"), *args)


def tiny_api(**kw: object) -> Callable[[], object]:
    def go() -> object:
        cfg = advlab.evaluation.parse_config(TOML.format(
            name="api", seed=0, data="mnist5k", n=8, model="m", params="{}", extra=""))
        model = advlab.zoo.load("mnist-cnn")
        models = {"m": kw.pop("model", model)}
        return advlab.evaluation.run(cfg, root=WORK / "api", models=models, **kw)
    return go


def healthy_root() -> Path:
    """A results folder holding a finished run (a healthy database)."""
    root = Path(tempfile.mkdtemp(dir=WORK))
    res = CliRunner().invoke(cli, ["run", str(toml(name="h")), "--root", str(root),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    return root


def probes() -> list[tuple[str, Callable[[], tuple[bool, str] | None]]]:
    y = torch.zeros(8, dtype=torch.long)
    empty = WORK / "empty.txt"
    empty.write_bytes(b"")
    state = WORK / "w.safetensors"
    torch.save(advlab.zoo.build("mnist-cnn").state_dict(), state)
    pickled = WORK / "p.safetensors"
    torch.save(advlab.zoo.build("mnist-cnn").state_dict(), pickled,
               _use_new_zipfile_serialization=False)
    bad = toml()
    bad.write_bytes(b'name = "\xff"\n')
    h = healthy_root()
    ro = "mount --bind -o ro {0} {0}".format
    return [
        ("2 --name ..", lambda: run(str(toml()), "--name", "..")),
        ("2 --name ../x", lambda: said(run(str(toml()), "--name", "../x"), "--name must be")),
        ("3 long run name", lambda: run(str(toml(name="x" * 300)))),
        ("3 NUL in run name", lambda: run(str(toml(name="a\\u0000b")))),
        ("3 noise = [nan]", lambda: run(str(toml(extra="[probes]\nnoise = [nan]")))),
        ("3 unknown attack param", lambda: run(str(toml(params="{ colour = 1 }")))),
        ("3 unknown detector param", lambda: run(str(toml(
            extra='[[detectors]]\nname = "deep-knn"\nparams = { colour = 1 }')))),
        ("3 unknown defense transform", lambda: run(str(toml(
            extra='[[defenses]]\nname = "transformed"\n'
                  'params = { transforms = [{ name = "Nope" }] }')))),
        ("3 bits = \"two\"", lambda: run(str(toml(
            extra='[[defenses]]\nname = "transformed"\n'
                  'params = { transforms = [{ name = "BitDepth", bits = "two" }] }')))),
        ("3 params = \"abc\"", lambda: run(str(toml(params='"abc"')))),
        ("3 data the model rejects", lambda: run(str(toml(data="digits")))),
        ("3 seed type", lambda: run(str(toml(seed='"0"')))),
        ("3 batch_size type", lambda: run(str(_replace(toml(), "batch_size = 8",
                                                       'batch_size = "8"')))),
        ("3 workers type", lambda: run(str(_replace(toml(), "workers = 1", "workers = 1.5")))),
        ("3 data.n type", lambda: run(str(toml(n='"8"')))),
        ("3 report.gallery type", lambda: run(str(toml(extra='[report]\ngallery = "8"')))),
        ("3 report.eps type", lambda: run(str(toml(extra='[report]\neps = "0.3"')))),
        ("3 probes.shifts type", lambda: run(str(toml(extra='[probes]\nshifts = "1"')))),
        ("3 sanity.max_examples type", lambda: run(str(_replace(
            toml(), "enabled = false\n[adaptive]",
            'enabled = false\nmax_examples = "5"\n[adaptive]')))),
        ("3 device = \"tpu\"", lambda: run(str(_replace(toml(), "workers = 1",
                                                        'workers = 1\ndevice = "tpu"')))),
        ("3 config not UTF-8", lambda: run(str(bad))),
        ("4 sanity enabled = \"no\"", lambda: run(str(_replace(
            toml(), "enabled = false\n[adaptive]", 'enabled = "no"\n[adaptive]')))),
        ("4 seed = 1.5", lambda: run(str(toml(seed="1.5")))),
        ("4 unknown key in [report]", lambda: run(str(toml(extra="[report]\ncolour = 1")))),
        ("4 data.n = 100000", lambda: run(str(toml(n=100000)))),
        ("4 attack -n 5000", lambda: clean_cli("attack", "fgsm", "-n", "5000")),
        ("4 models = \"mnist-cnn\"", lambda: said(run(str(_prepend(_replace(
            toml(), '[[models]]\nname = "mnist-cnn"\n', ""), 'models = "mnist-cnn"\n'))),
            "models must be a list")),
        ("5 full disk at COMMIT", lambda: _faulty(lambda: run(str(toml(name="c"))))),
        ("5 full disk writing the report", lambda: _no_space(lambda: clean_cli(
            "report", str(h / "h")))),
        ("5 read-only run folder", lambda: clean_process(
            f"run {toml(name='h')} --root {h} --no-progress", ro(h / "h"))),
        ("5 read-only database", lambda: clean_process(
            f"run {toml(name='h2')} --root {h} --no-progress", ro(h / "advlab.sqlite"))),
        ("5 healthy database, read-only file system", lambda: clean_process(
            f"run {toml(name='h3')} --root {h} --no-progress", ro(h))),
        ("5 read-only $ADVLAB_HOME before training", lambda: clean_process(
            f"run {toml(model='digits-mlp', data='digits')} --root {WORK / 'r5'} "
            "--no-progress", f"mkdir -p {WORK / 'home'}; {ro(WORK / 'home')}; "
            f"export ADVLAB_HOME={WORK / 'home'}")),
        ("5 full $ADVLAB_HOME before training", lambda: clean_process(
            f"run {toml(model='digits-mlp', data='digits')} --root {WORK / 'r6'} "
            "--no-progress", f"mkdir -p {WORK / 'full'}; "
            f"mount -t tmpfs -o size=1m tmpfs {WORK / 'full'}; "
            f"export ADVLAB_HOME={WORK / 'full'}")),
        ("6 torch.save state dict named .safetensors", lambda: clean_cli(
            "attack", "fgsm", "-n", "8", "--weights", str(state))),
        ("6 pickle named .safetensors", lambda: clean_cli(
            "attack", "fgsm", "-n", "8", "--weights", str(pickled))),
        ("8 train-mode model", lambda: clean_api(tiny_api(
            model=advlab.zoo.load("mnist-cnn").train()))),
        ("8 3-channel images", lambda: clean_api(tiny_api(data=(torch.rand(8, 3, 28, 28), y)))),
        ("8 32x32 images", lambda: clean_api(tiny_api(data=(torch.rand(8, 1, 32, 32), y)))),
        ("8 float64 images", lambda: clean_api(tiny_api(
            data=(torch.rand(8, 1, 28, 28, dtype=torch.float64), y)))),
        ("8 steps=2.5", lambda: clean_api(lambda: advlab.attacks.get("pgd", steps=2.5))),
        ("8 unknown keyword", lambda: clean_api(lambda: advlab.attacks.get("pgd", colour=1))),
        ("9 --param steps=2.5", lambda: attack("--param", "steps=2.5")),
        ("9 --param eps=nan", lambda: attack("--param", "eps=nan")),
        ("9 --param eps=\"0.1\"", lambda: attack("--param", 'eps="0.1"')),
        ("9 --device tpu", lambda: attack("--device", "tpu")),
        ("9 --data digits, MNIST model", lambda: attack("--data", "digits")),
        ("9 --out on a read-only file system", lambda: clean_process(
            f"attack fgsm -n 8 --out {WORK / 'rodir' / 'g.png'}",
            f"mkdir -p {WORK / 'rodir'}; {ro(WORK / 'rodir')}")),
        ("9 --param steps=abc", lambda: said(attack("--param", "steps=abc"),
                                             "steps must be an integer")),
        ("10 report --db empty.txt", lambda: said(clean_cli(
            "report", str(WORK / "run"), "--db", str(empty)), "(an empty file)")),
        ("10 image maximum 1+1e-6", lambda: _image_message()),
        ("10 weights path a directory", lambda: said(run(str(_replace(
            toml(), 'name = "mnist-cnn"\n', f'name = "m"\nfile = "{WORK}"\n'
            'arch = "mnist-cnn"\n'))), "is a directory")),
        ("10 weights path /dev/zero", lambda: said(clean_cli(
            "attack", "fgsm", "-n", "8", "--weights", "/dev/zero"), "not a regular file")),
    ]


def said(got: tuple[bool, str], words: str) -> tuple[bool, str]:
    """A clean error must also say what is wrong (the probes whose old message misled)."""
    return got[0] and words in got[1], got[1]


def _replace(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))
    return path


def _prepend(path: Path, text: str) -> Path:
    path.write_text(text + path.read_text())
    return path


class _Full:
    """A connection on a disk that fills up: every COMMIT fails as SQLite's does."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)

    def execute(self, sql: str, *args: object) -> object:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)


def _faulty(probe: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    real = sqlite3.connect
    store.sqlite3.connect = lambda *a, **k: _Full(real(*a, **k))  # type: ignore[assignment]
    try:
        return probe()
    finally:
        store.sqlite3.connect = real  # type: ignore[assignment]


def _no_space(probe: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    real, records.os.fsync = records.os.fsync, full  # type: ignore[assignment]
    try:
        return probe()
    finally:
        records.os.fsync = real  # type: ignore[assignment]


def _image_message() -> tuple[bool, str]:
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    x[0, 0, 0, 0] = 1 + 1e-6
    ok, msg = clean_api(lambda: advlab.validation.check_images(x))
    return ok and "1.000001" in msg, msg


def main() -> None:
    results = []
    for name, probe in probes():
        got = probe()
        status = "skipped" if got is None else ("clean" if got[0] else "NOT CLEAN")
        results.append(status)
        print(f"{status:9}  {name:45}  {'' if got is None else got[1][:110]}")
    print(f"\n{results.count('clean')} of {len(results)} probes end in a clean one-line error"
          f" ({results.count('skipped')} skipped, {results.count('NOT CLEAN')} not clean)")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
