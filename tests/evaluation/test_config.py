"""advlab.evaluation.config: the run's configuration from a dict or a TOML file, and its errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import advlab
from advlab.errors import ConfigError, ParameterError, UnknownNameError
from advlab.evaluation.config import (
    DEFAULT_TOML,
    config_from_dict,
    load_config,
    parse_config,
    validate,
)
from advlab.evaluation.plan import plan_cells
from testkit import tiny_config


def test_config_keys_for_models_data_device_precision(tmp_path: Path) -> None:
    base = {"models": [{"name": "m", "factory": "net.py:build", "weights": "w.safetensors"}],
            "attacks": ["fgsm"]}
    cfg = config_from_dict({**base, "batch_size": "auto", "device": "cuda:1",
                            "precision": "bf16", "data": {"name": "npz:d.npz", "resize": 32,
                                                          "channels": 3, "subset": "random"}})
    assert (cfg.batch_size, cfg.device, cfg.precision) == ("auto", "cuda:1", "bf16")
    assert (cfg.data.resize, cfg.data.channels, cfg.data.subset) == ((32, 32), 3, "random")
    assert cfg.to_dict()["precision"] == "bf16"
    for bad, match in [({"batch_size": 0}, "batch_size"), ({"device": "tpu"}, "device must"),
                       ({"precision": "fp8"}, "precision must"),
                       ({"data": {"channels": 2}}, "channels must be 1 or 3"),
                       ({"data": {"resize": [1, 2, 3]}}, "resize must"),
                       ({"data": {"subset": "best"}}, "subset must")]:
        with pytest.raises(ConfigError, match=match):
            config_from_dict({**base, **bad})
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my.toml").write_text(
        '[data]\nname = "folder:imgs"\n[[models]]\nname = "m"\nfactory = "net.py:build"\n'
        'weights = "w.safetensors"\n[[attacks]]\nname = "fgsm"\n')
    cfg = load_config(tmp_path / "sub" / "my.toml")
    assert cfg.data.name == f"folder:{(tmp_path / 'sub' / 'imgs').resolve()}"
    assert cfg.models[0].factory == f"{(tmp_path / 'sub' / 'net.py').resolve()}:build"


def test_default_config_builds() -> None:
    cfg = load_config()
    assert cfg == parse_config(DEFAULT_TOML)
    assert DEFAULT_TOML.startswith("# advlab's built-in tour")       # the package's tour.toml
    assert cfg.shard_size is None and cfg.execution.executor == "processes"
    assert [m.name for m in cfg.models] == ["mnist-mlp", "mnist-cnn"]
    assert [a.name for a in cfg.attacks] == ["fgsm", "bim", "pgd", "fgsm", "pgd", "cw-l2",
                                             "fgsm", "pgd", "square", "bandits", "simba-dct"]
    assert all(a.eps == (0.05, 0.1, 0.2, 0.3) for a in cfg.attacks[:3])
    assert cfg.data.name == "mnist5k" and cfg.data.split == "test"
    fps = {"mnist-mlp": "f1", "mnist-cnn": "f2"}
    cells = plan_cells(cfg, fps, "d", 300)
    assert len({c.key for c in cells}) == len(cells)
    kinds = [c.kind for c in cells]
    assert kinds.count("attack") == 24 + (3 + 2) + (2 + 2) + 3   # grid, cnn, mlp, black-box
    defended = [(c.model, c.defense.name) for c in cells if c.kind == "defense"]
    assert defended == [("mnist-mlp", "distillation"), ("mnist-cnn", "transformed")]
    assert kinds.count("detector") == len(cfg.detectors)    # fgsm and pgd at 0.3: one each
    bb = [c for c in cells if c.kind == "attack" and c.attack in ("square", "bandits", "simba-dct")]
    assert [(c.model, c.defense.name, c.n) for c in bb] == [("mnist-cnn", "none", 100),
                                                            ("mnist-cnn", "none", 50),
                                                            ("mnist-cnn", "none", 20)]
    curves = [c for c in cells if c.kind == "curve"]  # one cheap robustness curve
    assert [(c.model, c.defense.name, c.n, c.norm, c.build(0).grid.tolist()) for c in curves] \
        == [("mnist-cnn", "none", 50, "linf", [0.05, 0.1, 0.2, 0.3])]
    again = plan_cells(load_config(), fps, "d", 300)
    assert [c.key for c in cells] == [c.key for c in again]
    other = plan_cells(cfg, {"mnist-mlp": "f1", "mnist-cnn": "CHANGED"}, "d", 300)
    mlp = [c.key for c in cells if c.model == "mnist-mlp"]
    assert [c.key for c in other if c.model == "mnist-mlp"] == mlp      # mlp cells kept
    assert not {c.key for c in other if c.model == "mnist-cnn"} & {c.key for c in cells}
    for c in cells:  # every naive cell builds its attack
        if c.kind == "attack":
            eps = {} if c.eps is None else {"eps": c.eps}
            advlab.attacks.get(c.attack, **c.params, **eps)


@pytest.mark.parametrize("bad, match", [
    ({"colour": "red"}, "unknown key"),
    ({"models": []}, "no \\[\\[models\\]\\]"),
    ({"attacks": []}, "no \\[\\[attacks\\]\\]"),
    ({"attacks": [{"name": "fgsm", "eps": -0.1}]}, "eps must be a non-negative number"),
    ({"attacks": [{"name": "fgsm", "params": {"eps": 0.1}}]}, "'eps' grid"),
    ({"attacks": [{"name": "fgsm", "target": "worst"}]}, "target must be"),
    ({"models": [{"name": "m", "file": "w.safetensors"}]}, "needs its 'arch'"),
    ({"models": ["a", "a"]}, "distinct"),
    ({"data": {"name": "x", "size": 3}}, "unknown key"),
    ({"name": "../evil"}, "plain folder name"),
    ({"detectors": ["lid", "lid"]}, "detector names must be distinct"),
    ({"shard_size": 10}, r"shard_size \(10\) must be a multiple of batch_size \(24\)"),
    ({"shard_size": 0}, "shard_size must be a positive integer"),
    ({"shard_size": 500, "batch_size": "auto"}, r"batch_size \(auto, that is 1024\)"),
    ({"execution": {"executor": "dask"}}, "executor must be one of processes, inline, ray"),
    ({"execution": {"address": "h:1"}}, "address of a Ray cluster"),
    ({"execution": {"gpus": 0}}, "gpus must be a positive number"),
    ({"execution": {"nodes": 2}}, r"unknown key\(s\) \['nodes'\] in execution"),
])
def test_config_errors(bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny_config(**bad)


def test_unknown_attack_lists_what_exists() -> None:
    with pytest.raises(UnknownNameError, match="available: .*fgsm.*pgd"):
        tiny_config(attacks=[{"name": "nope"}])


def test_toml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_config("name = ")
    with pytest.raises(ConfigError, match="no configuration file"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("attack, match", [
    ({"n": 0}, "n must be a positive integer"),
    ({"n": True}, "n must be a positive integer"),
    ({"n": "10"}, "n must be a positive integer"),
    ({"models": ["c"]}, r"models names \['c'\].*defined: a, b"),
    ({"models": "a"}, "must be a list of names"),
    ({"defenses": ["jpeg"]}, r"defenses names \['jpeg'\].*defined: none"),
    ({"detectors": ["knn"]}, r"detectors names \['knn'\].*defined: none"),
    ({"budget": 3}, "unknown key"),
])
def test_attack_scope_errors(attack: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny_config(attacks=[{"name": "fgsm", "eps": 0.1, **attack}])


@pytest.mark.parametrize("adaptive, match", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"lam": -1.0}, "lam must be a non-negative number"),
    ({"enabled": "yes"}, "enabled must be true or false"),
    ({"detector": "x"}, "unknown key"),
])
def test_adaptive_table_errors(adaptive: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny_config(adaptive=adaptive)


@pytest.mark.parametrize("curve, err, match", [
    ({}, ConfigError, r"curves\[0\] needs grid"),
    ({"grid": []}, ConfigError, "non-empty list of radii"),
    ({"grid": [-0.1]}, ConfigError, "non-negative"),
    ({"grid": [0.1], "minnorm": "pgd"}, ConfigError, "unbounded"),
    ({"grid": [0.1], "bounded": "fab"}, ConfigError, "fab.* is a minimum-norm attack"),
    ({"grid": [0.1], "bounded": "apgd-ce", "norm": "l2", "minnorm": "fab"}, None, None),
    ({"grid": [0.1], "minnorm": "fab-l2"}, ConfigError, "bounded in l2"),
    ({"grid": [0.1], "bounded_params": {"eps": 0.3}}, ConfigError, "no eps"),
    ({"grid": [0.1], "minnorm": "nope"}, UnknownNameError, "nope"),
    ({"grid": [0.1], "params": {"stepz": 3}}, ParameterError, "stepz"),
    ({"grid": [0.1], "models": ["c"]}, ConfigError, r"curves\[0\]\.models"),
    ({"grid": [0.1], "eps": 0.1}, ConfigError, "unknown key"),
])
def test_bad_curve_tables(curve: dict[str, Any], err: Any, match: str | None) -> None:
    d = {"models": ["a"], "curves": [curve]}
    if err is None:
        cfg = config_from_dict(d)
        assert cfg.curves[0].norm == "l2" and not cfg.attacks
        return
    with pytest.raises(err, match=match):
        config_from_dict(d)


def test_a_curve_without_grid_confirmation_and_the_round_trip() -> None:
    cfg = tiny_config(curves=[{"grid": [0.1], "bounded": "none", "models": ["a"], "n": 8}])
    assert cfg.curves[0].bounded is None
    assert validate(cfg).curves == cfg.curves


@pytest.mark.parametrize("over, match", [
    ({"sanity": {"enabled": "no"}}, "sanity.enabled must be true or false"),  # was true
    ({"seed": 1.5}, "seed must be an integer"),                                # was 1
    ({"report": {"gallery": 1, "colour": "red"}}, r"unknown key\(s\) \['colour'\]"),
    ({"models": "mnist-cnn"}, "models must be a list"),   # was ['m', 'n', 'i', ...]
])
def test_wrong_meanings_are_refused(over: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny_config(**over)
