"""Every malformed configuration is one line of error and exit code 2 before any cell.

The cases come from walking :data:`advlab.evaluation.schema.CONFIG`: every key gets values
of the wrong type, out of its range, NaN and infinities, empty values and wrong containers;
every table gets an unknown key. Then the mistakes that only building the configuration
finds (attack, defense and detector parameters, names, devices, data sizes). Each case runs
``advlab run`` in-process (click's CliRunner) on the TOML file; a few run as real processes.
"""
from __future__ import annotations

import copy
import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from advlab.cli import cli
from advlab.errors import AdvlabError
from advlab.evaluation import config_from_dict, inputs, schema

#: a small valid configuration that sets every key of the schema
BASE: dict[str, Any] = {
    "name": "fuzz", "seed": 0, "batch_size": 8, "device": "cpu", "precision": "fp32",
    "workers": 1, "shard_size": 8,
    "execution": {"executor": "inline", "cpus": 1.0, "gpus": 1.0},  # address: Ray only
    "data": {"name": "mnist5k", "split": "test", "n": 8, "train_split": "train",
             "fit_n": 50, "root": "unused", "resize": [28, 28], "channels": 1,
             "subset": "first"},
    "models": [{"name": "mnist-mlp", "file": "w.safetensors", "arch": "mnist-mlp",
                "normalize": {"mean": [0.0], "std": [1.0]}}],
    "defenses": [{"name": "none", "params": {}}],
    "detectors": [{"name": "deep-knn", "params": {"layers": ["fc2"]}}],
    "attacks": [{"name": "fgsm", "eps": [0.1], "params": {}, "target": "next", "n": 4,
                 "models": ["mnist-mlp"], "defenses": ["none"], "detectors": ["deep-knn"]}],
    "curves": [{"grid": [0.1], "minnorm": "fab", "params": {}, "bounded": "apgd-ce",
                "bounded_params": {}, "norm": "linf", "n": 4, "models": ["mnist-mlp"],
                "defenses": ["none"]}],
    "probes": {"shifts": [1], "noise": [0.05]},
    "report": {"gallery": 1, "eps": 0.1},
    "sanity": {"enabled": False, "max_examples": 5, "blackbox_queries": 10,
               "ladder_rungs": ["logits"]},
    "adaptive": {"enabled": False, "steps": 1, "lam": 1.0},
}

_NAN, _INF = float("nan"), float("inf")
_CONTAINERS: list[Any] = [[], {}, [1]]


def _bad_values(check: Any) -> list[Any]:
    """Values that ``check`` (a leaf of the schema) must refuse."""
    about = vars(check)
    kind, lo, hi = about["kind"], about.get("lo"), about.get("hi")
    if kind == "int":
        out = ["1", 1.5, True, _NAN, _INF, *_CONTAINERS]
        return out + ([lo - 1] if lo is not None else []) + ([hi + 1] if hi is not None else [])
    if kind == "number":
        out = ["0.1", True, _NAN, _INF, -_INF, *_CONTAINERS]
        return out + ([lo - 0.5] if lo is not None else []) + \
            ([hi + 0.5] if hi is not None else [])
    if kind == "bool":
        return ["no", "true", 1, 0, 1.0, *_CONTAINERS]
    if kind == "str":
        out = [3, 1.5, True, "", "  ", "a\0b", _NAN, *_CONTAINERS]
        if about.get("choices"):
            out.append("nope")
        if check is schema.run_name:
            out += [".", "..", "../x", "a/b", "a\\b", ".hidden", "x" * 101, "a\nb"]
        return out
    if kind == "params":
        return ["abc", 3, True, [], [1, 2]]
    raise AssertionError(f"no bad values for {kind}")


def _cases(check: Any, path: tuple) -> list[tuple[tuple, Any]]:
    """(path, bad value) for every key below ``check``."""
    about = vars(check)
    kind = about["kind"]
    if kind == "table":
        out = [(path, v) for v in (3, 1.5, True, [])] if path else []
        out.append(((*path, "bogus"), 1))  # an unknown key in every table
        for key, sub in about["fields"].items():
            out += _cases(sub, (*path, key))
        return out
    if kind == "list":
        out = [(path, v) for v in ("text", 3, {}, True)]
        return out + _cases(about["item"], (*path, 0))
    if kind == "one_or_list":
        return [(path, []), (path, "0.1"), (path, {})] + _cases(about["item"], (*path, 0))
    if kind == "optional":
        return _cases(about["item"], path)
    return [(path, v) for v in _bad_values(check)]


SCHEMA_CASES = _cases(schema.CONFIG, ())


def _with(path: tuple, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return d


# mistakes that the schema lets through and building the configuration finds
_PLANT = [
    (("attacks", 0, "name"), "nope"),
    (("attacks", 0, "params"), {"eps": 0.1}),
    (("attacks", 0, "params"), {"steps": 2}),                 # fgsm takes no steps
    (("attacks", 0, "params"), {"bogus": 1}),
    (("attacks", 0, "models"), ["other"]),
    (("attacks", 0, "defenses"), ["jpeg"]),
    (("attacks", 0, "detectors"), ["lid"]),
    (("defenses",), [{"name": "none"}, {"name": "nope"}]),
    (("defenses",), [{"name": "transformed", "params": {"transforms": [{"name": "Nope"}]}}]),
    (("defenses",), [{"name": "transformed", "params": {"transforms": [{"name": "InputError"}]}}]),
    (("defenses",), [{"name": "transformed",
                      "params": {"transforms": [{"name": "BitDepth", "bits": "two"}]}}]),
    (("defenses",), [{"name": "transformed", "params": {"transforms": "BitDepth"}}]),
    (("defenses",), [{"name": "transformed",
                      "params": {"transforms": [{"name": "BitDepth"}], "bogus": 1}}]),
    (("defenses",), [{"name": "distillation", "params": {"temperature": "hot"}}]),
    (("defenses",), [{"name": "distillation", "params": {"epochs": 1.5}}]),
    (("defenses",), [{"name": "adversarial-training", "params": {"attack": "nope"}}]),
    (("defenses",), [{"name": "adversarial-training", "params": {"method": "nope"}}]),
    (("defenses",), [{"name": "adversarial-training", "params": {"epochs": "x"}}]),
    (("detectors",), [{"name": "nope"}]),
    (("detectors",), [{"name": "deep-knn", "params": {"k": "ten"}}]),
    (("detectors",), [{"name": "deep-knn", "params": {"bogus": 1}}]),
    (("detectors",), [{"name": "lid"}, {"name": "lid"}]),
    (("models",), [{"name": "mnist-mlp"}, {"name": "mnist-mlp"}]),
    (("models",), [{"name": "no-such-model"}]),
    (("models",), [{"name": "m", "file": "w.safetensors"}]),
    (("device",), "tpu"),
    (("device",), "cuda:99"),
    (("attacks",), [{"name": "pgd", "params": {"steps": 2.5}}]),
    (("attacks",), [{"name": "pgd", "params": {"steps": "abc"}}]),
    (("attacks",), [{"name": "pgd", "params": {"alpha": -1.0}}]),
    (("attacks",), [{"name": "pgd", "params": {"norm": "l7"}}]),
]


def _toml(v: Any) -> str:
    """TOML of a value (inline tables; strings as JSON, which TOML reads)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml, v)) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(e)}" for k, e in v.items()) + "}"


def _write(d: dict[str, Any], folder: Path) -> Path:
    path = folder / "cfg.toml"
    path.write_text("".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in d.items()))
    return path


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """BASE without the model file (the valid base runs on the zoo's mnist-mlp)."""
    d = copy.deepcopy(d)
    for m in d["models"] if isinstance(d["models"], list) else []:
        if isinstance(m, dict) and (m.get("file"), m.get("arch")) == ("w.safetensors",
                                                                       "mnist-mlp"):
            del m["file"], m["arch"]
    return d


def _no_cells(root: Path) -> bool:
    db = root / "advlab.sqlite"
    if not db.exists():
        return True
    with sqlite3.connect(db) as con:
        return con.execute("SELECT count(*) FROM cells").fetchone()[0] == 0


def test_the_base_is_valid() -> None:
    """Every case below differs from a configuration that builds."""
    cfg = config_from_dict(_plain(BASE))
    inputs.check_buildable(cfg)


def test_every_key_is_fuzzed() -> None:
    keys = {p[:1] if p[0] != "models" else p[:3] for p, _ in SCHEMA_CASES if len(p) >= 1}
    assert {(k,) for k in BASE} <= {k[:1] for k in keys}
    assert len(SCHEMA_CASES) > 300


@pytest.mark.parametrize("path, value", SCHEMA_CASES, ids=[
    f"{'.'.join(map(str, p))}={v!r}"[:60] for p, v in SCHEMA_CASES])
def test_schema_refuses(path: tuple, value: Any) -> None:
    """The mapping is refused by the schema itself (one ConfigError, nothing built)."""
    with pytest.raises(AdvlabError):
        config_from_dict(_plain(_with(path, value)))


def test_cli_one_line_before_any_cell(tmp_path: Path) -> None:
    """Every case, through `advlab run` in-process: exit code 2, one line, no traceback,
    no cell stored."""
    cli_runner = CliRunner()
    failures = []
    for i, (path, value) in enumerate([*SCHEMA_CASES, *_PLANT]):
        folder = tmp_path / str(i)
        folder.mkdir()
        cfg = _write(_plain(_with(path, value)), folder)
        res = cli_runner.invoke(cli, ["run", str(cfg), "--root", str(folder / "runs"),
                                      "--no-progress"])
        lines = res.output.strip().splitlines()
        if res.exit_code != 2 or len(lines) != 1 or not lines[0].startswith("Error: ") or \
                "Traceback" in res.output or not _no_cells(folder / "runs"):
            failures.append((path, value, res.exit_code, res.output[-300:]))
    assert not failures, failures[:5]


def test_real_process_one_line(tmp_path: Path) -> None:
    """The same in a real process (one case: the interpreter's start costs seconds)."""
    cfg = _write(_plain(_with(("probes", "noise"), [_NAN])), tmp_path)
    res = subprocess.run([sys.executable, "-m", "advlab.cli", "run", str(cfg), "--root",
                          str(tmp_path / "runs"), "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("Error: ")
    assert "Traceback" not in res.stderr and res.stdout == ""
