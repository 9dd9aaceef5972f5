"""Experiment configuration: what :func:`advlab.evaluation.run` evaluates.

A run is described by a TOML file (or the equivalent mapping): the data subset, the models,
the defenses, the attacks with their eps grids and parameters, the detectors, the fragility
probes, the sanity checks, the adaptive cells and report options. :data:`DEFAULT_TOML` is the
built-in tour of the lecture; ``advlab run`` with no file runs it. Every field is validated
with a clear :class:`~advlab.errors.ConfigError` naming the allowed keys.

Which cells exist is said in one place, each attack's scope (:class:`AttackSpec`): its first
``n`` images, the ``models``, ``defenses`` and ``detectors`` it runs with. ``[adaptive]``
switches the automatic adaptive cells (see :mod:`advlab.evaluation.runner`) and sets the
detector-aware attack's ``steps`` and weight ``lam``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advlab import attacks
from advlab.errors import ConfigError, UnknownNameError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the same parser, as tomli
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_TOML = """\
# advlab's built-in tour of the lecture, on the embedded MNIST subset and the zoo models.
# Copy this file, edit it, and run `advlab run my.toml`.
name = "tour"
seed = 0
batch_size = 500
workers = 0           # processes computing cells on CPU; 0: one per core

[data]
name = "mnist5k"      # embedded; see advlab.data.load
split = "test"
n = 300               # the first n images of the split

[[models]]
name = "mnist-mlp"    # a zoo name, "mnist-cnn-trades" (adversarially trained, cached), or:
                      # name = "mine", file = "w.safetensors", arch = "mnist-cnn"

[[models]]
name = "mnist-cnn"

# Every defended model is attacked naively and by its adaptive attack (BPDA / EOT).
[[defenses]]
name = "none"         # the undefended model

[[defenses]]
name = "transformed"  # bit-depth reduction to 2 bits in front of the classifier
params = { transforms = [{ name = "BitDepth", bits = 2 }] }

[[defenses]]
name = "distillation" # defensive distillation at temperature 100
params = { temperature = 100, epochs = 20, lr = 0.002 }

# Detectors score the undefended cells of the attacks that use them; each detector with a
# differentiable score is also attacked adaptively (PGD on the detector's score, [adaptive]).
[[detectors]]
name = "activation-knn"
params = { layers = ["pool1"], k = 10 }

[[detectors]]
name = "deep-knn"
params = { layers = ["pool1", "pool2", "relu3", "fc2"] }

[[detectors]]
name = "feature-distance"
params = { layers = ["pool1", "pool2", "relu3", "fc2"], n_adv = 300, epochs = 200 }

[[detectors]]
name = "lid"
params = { layers = ["pool1", "pool2", "relu3", "fc2"], n_adv = 300, epochs = 200 }

[[detectors]]
name = "mahalanobis"
params = { layers = ["pool1", "pool2", "relu3", "fc2"], n_adv = 300, epochs = 200 }

[[detectors]]
name = "feature-squeezing"

[[detectors]]
name = "transformation-detector"
params = { samples = 1, fit_size = 200 }

# Attacks run at every eps of their grid, on `models` (default: all), behind `defenses`
# (default: all), scored by `detectors` (default: all), on the first `n` images (default:
# all of [data]).

# 1. White-box robustness of both models
[[attacks]]
name = "fgsm"
eps = [0.05, 0.1, 0.2, 0.3]
defenses = ["none"]
detectors = []

[[attacks]]
name = "bim"
eps = [0.05, 0.1, 0.2, 0.3]
params = { steps = 10 }
defenses = ["none"]
detectors = []

[[attacks]]
name = "pgd"
eps = [0.05, 0.1, 0.2, 0.3]
params = { steps = 20, alpha = 0.02 }
defenses = ["none"]
detectors = []

# 2. Detectors and defenses, on a subset: mnist-cnn with bit-depth reduction,
#    mnist-mlp with distillation
[[attacks]]
name = "fgsm"
eps = 0.3
models = ["mnist-cnn"]
defenses = ["none", "transformed"]
n = 50

[[attacks]]
name = "pgd"
eps = 0.3
params = { steps = 20, alpha = 0.02 }
models = ["mnist-cnn"]
defenses = ["none", "transformed"]
n = 50

[[attacks]]
name = "cw-l2"
params = { search_steps = 3, steps = 50, c0 = 1.0 }
models = ["mnist-cnn"]
defenses = ["none"]
n = 50

[[attacks]]
name = "fgsm"
eps = 0.3
models = ["mnist-mlp"]
defenses = ["none", "distillation"]
detectors = []
n = 100

[[attacks]]
name = "pgd"
eps = 0.3
params = { steps = 20, alpha = 0.02 }
models = ["mnist-mlp"]
defenses = ["none", "distillation"]
detectors = []
n = 100

# 3. Black-box (score-based) attacks: success vs queries
[[attacks]]
name = "square"
eps = 0.3
params = { max_queries = 1000 }
models = ["mnist-cnn"]
defenses = ["none"]
detectors = []
n = 100

[[attacks]]
name = "bandits"
eps = 0.3
params = { max_queries = 1000 }
models = ["mnist-cnn"]
defenses = ["none"]
detectors = []
n = 50

[[attacks]]
name = "simba-dct"
params = { max_queries = 1000 }
models = ["mnist-cnn"]
defenses = ["none"]
detectors = []
n = 20

[adaptive]            # automatic adaptive cells (defenses, detectors, sanity findings)
enabled = true
steps = 20            # PGD steps of the detector-aware attack
lam = 1.0             # weight of the detector's unit gradient against the classifier's

[probes]
shifts = [1, 2]       # fragility: shift right by 1 and 2 pixels
noise = [0.05]        # fragility: add N(0, 0.05^2) noise

[sanity]              # advlab.evaluation.sanity checks at the report's reference eps
enabled = true
max_examples = 50
blackbox_queries = 500
ladder_square_queries = 1000  # the adaptive-attack ladder of a model advlab did not build:
ladder_label_queries = 1000   # Square's budget per p_init, HopSkipJump's, APGD's steps,
ladder_steps = 100            # the distilled surrogate's epochs
ladder_distill_epochs = 4

[report]
gallery = 8           # image pairs stored per cell
eps = 0.3             # the reference eps of gallery, transfer, properties and sanity
"""

# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ModelSpec:
    """A model: a zoo name or a robust model's (:data:`advlab.defenses.ROBUST`), or a
    safetensors ``file`` holding weights of zoo architecture ``arch``."""

    name: str
    file: str | None = None
    arch: str | None = None


@dataclass(frozen=True)
class AttackSpec:
    """An attack by registry name, its eps grid (None: the attack's own default or a
    minimum-norm attack), its other parameters, an optional target selection ("random",
    "least_likely" or "next") for a targeted attack, and its *scope*: where it runs.

    The scope is the one place that says which cells an attack contributes: the first ``n``
    evaluation images (None: all of [data]), the ``models``, the ``defenses`` (by name) and
    the ``detectors`` (by name; they score its undefended cells) it runs with. None means
    all of the configured ones.
    """

    name: str
    eps: tuple[float | None, ...] = (None,)
    params: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    n: int | None = None
    models: tuple[str, ...] | None = None
    defenses: tuple[str, ...] | None = None
    detectors: tuple[str, ...] | None = None

    def runs_on(self, model: str, defense: str) -> bool:
        """Whether this attack has cells on ``model`` behind defense ``defense``."""
        return (self.models is None or model in self.models) and \
            (self.defenses is None or defense in self.defenses)

    def scored_by(self, detector: str) -> bool:
        """Whether detector ``detector`` scores this attack's undefended cells."""
        return self.detectors is None or detector in self.detectors


@dataclass(frozen=True)
class PluginSpec:
    """A defense or detector: a name and its parameters (``none`` is no defense)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSpec:
    """The evaluation images: the first ``n`` of ``split`` of data set ``name`` (None: all);
    detectors and trained defenses fit on up to ``fit_n`` images of ``train_split``."""

    name: str = "mnist5k"
    split: str = "test"
    n: int | None = 1000
    train_split: str = "train"
    fit_n: int | None = 2000
    root: str | None = None


@dataclass
class RunConfig:
    """Everything :func:`run` needs; build it from TOML with :func:`load_config`."""

    name: str = "tour"
    seed: int = 0
    batch_size: int = 500
    device: str | None = None
    workers: int = 0  # processes computing cells on CPU; 0: one per core (see runner)
    data: DataSpec = field(default_factory=DataSpec)
    models: list[ModelSpec] = field(default_factory=list)
    attacks: list[AttackSpec] = field(default_factory=list)
    defenses: list[PluginSpec] = field(default_factory=lambda: [PluginSpec("none")])
    detectors: list[PluginSpec] = field(default_factory=list)
    shifts: tuple[int, ...] = (1, 2)
    noise: tuple[float, ...] = (0.05,)
    gallery: int = 8
    report: dict[str, Any] = field(default_factory=dict)
    sanity: dict[str, Any] = field(default_factory=lambda: dict(SANITY))
    adaptive: dict[str, Any] = field(default_factory=lambda: dict(ADAPTIVE))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (what the results database and results.json record)."""
        return {
            "name": self.name, "seed": self.seed, "batch_size": self.batch_size,
            "device": self.device, "data": vars(self.data),
            "models": [vars(m) for m in self.models],
            "attacks": [{"name": a.name, "eps": list(a.eps), "params": a.params,
                         "target": a.target, "n": a.n, "models": _list(a.models),
                         "defenses": _list(a.defenses), "detectors": _list(a.detectors)}
                        for a in self.attacks],
            "defenses": [vars(d) for d in self.defenses],
            "detectors": [vars(d) for d in self.detectors],
            "probes": {"shifts": list(self.shifts), "noise": list(self.noise)},
            "report": {"gallery": self.gallery, **self.report},
            "sanity": self.sanity,
            "adaptive": self.adaptive,
        }


def _list(v: tuple[str, ...] | None) -> list[str] | None:
    return None if v is None else list(v)


_TOP = {"name", "seed", "batch_size", "device", "workers", "data", "models", "attacks",
        "defenses", "detectors", "probes", "report", "sanity", "adaptive"}

#: defaults of the [sanity] table
SANITY: dict[str, Any] = {"enabled": True, "max_examples": 100, "blackbox_queries": 500,
                          "ladder_steps": 100, "ladder_square_queries": 1000,
                          "ladder_label_queries": 1000, "ladder_distill_epochs": 4}

#: defaults of the [adaptive] table: whether the runner adds adaptive cells (a defense's own
#: adaptive attack, the detector-aware PGD against each detector, the attacks that fired
#: sanity findings name), and the detector-aware PGD's steps and weight lam of its detector term
ADAPTIVE: dict[str, Any] = {"enabled": True, "steps": 20, "lam": 1.0}


def _keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = set(d) - allowed
    if extra:
        raise ConfigError(f"unknown key(s) {sorted(extra)} in {where}; allowed: "
                          f"{', '.join(sorted(allowed))}")


def _table(v: Any, where: str) -> dict[str, Any]:
    if isinstance(v, str):
        return {"name": v}
    if not isinstance(v, dict) or "name" not in v:
        raise ConfigError(f"{where} must be a name or a table with a 'name', got {v!r}")
    return v


def _eps_grid(v: Any, where: str) -> tuple[float | None, ...]:
    grid = v if isinstance(v, list) else [v]
    for e in grid:
        if e is not None and (isinstance(e, bool) or not isinstance(e, (int, float))
                              or not math.isfinite(e) or e < 0):
            raise ConfigError(f"{where}: eps must be non-negative numbers, got {e!r}")
    return tuple(None if e is None else float(e) for e in grid) or (None,)


def _positive_int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{where} must be a positive integer, got {v!r}")
    return v


def _names(v: Any, known: list[str], where: str) -> tuple[str, ...] | None:
    """A scope list: names among ``known`` (None when not given)."""
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ConfigError(f"{where} must be a list of names, got {v!r}")
    unknown = sorted(set(v) - set(known))
    if unknown:
        raise ConfigError(f"{where} names {unknown}, which the configuration does not "
                          f"define; defined: {', '.join(dict.fromkeys(known)) or 'none'}")
    return tuple(v)


def _attack_spec(v: Any, i: int, scope: dict[str, list[str]]) -> AttackSpec:
    where = f"attacks[{i}]"
    d = _table(v, where)
    _keys(d, {"name", "eps", "params", "target", "n", "models", "defenses", "detectors"},
          where)
    available = attacks.available()
    if d["name"] not in available:
        raise UnknownNameError("attack", d["name"], list(available))
    params = dict(d.get("params", {}))
    if "eps" in params:
        raise ConfigError(f"{where}: give eps as the attack's 'eps' grid, not in params")
    target = d.get("target")
    if target not in (None, "random", "least_likely", "next"):
        raise ConfigError(f"{where}: target must be random, least_likely or next, "
                          f"got {target!r}")
    n = None if d.get("n") is None else _positive_int(d["n"], f"{where}.n")
    return AttackSpec(d["name"], _eps_grid(d.get("eps"), where), params, target, n,
                      *(_names(d.get(k), scope[k], f"{where}.{k}")
                        for k in ("models", "defenses", "detectors")))


def _adaptive(d: dict[str, Any]) -> dict[str, Any]:
    _keys(d, set(ADAPTIVE), "[adaptive]")
    out = {**ADAPTIVE, **d}
    if not isinstance(out["enabled"], bool):
        raise ConfigError(f"[adaptive].enabled must be true or false, got {out['enabled']!r}")
    _positive_int(out["steps"], "[adaptive].steps")
    lam = out["lam"]
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) \
            or lam < 0:
        raise ConfigError(f"[adaptive].lam must be a non-negative number, got {lam!r}")
    return {**out, "lam": float(lam)}


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Validate a configuration mapping (the parsed TOML) and build a :class:`RunConfig`.

    Raises:
        ConfigError: unknown keys, wrong types, no models or no attacks.
        UnknownNameError: an attack name that is not registered.
    """
    _keys(d, _TOP, "the configuration")
    data = dict(d.get("data", {}))
    _keys(data, set(DataSpec.__dataclass_fields__), "[data]")
    models = [_table(m, f"models[{i}]") for i, m in enumerate(d.get("models", []))]
    for i, m in enumerate(models):
        _keys(m, {"name", "file", "arch"}, f"models[{i}]")
        if ("file" in m) != ("arch" in m):
            raise ConfigError(f"models[{i}]: a weights 'file' needs its 'arch' and vice versa")
    names = [m["name"] for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be distinct, got {names}")
    plugins = {}
    for kind in ("defenses", "detectors"):
        specs = []
        for i, p in enumerate(d.get(kind, ["none"] if kind == "defenses" else [])):
            p = _table(p, f"{kind}[{i}]")
            _keys(p, {"name", "params"}, f"{kind}[{i}]")
            specs.append(PluginSpec(p["name"], dict(p.get("params", {}))))
        plugins[kind] = specs
    probes = dict(d.get("probes", {}))
    _keys(probes, {"shifts", "noise"}, "[probes]")
    report = dict(d.get("report", {}))
    sanity = dict(d.get("sanity", {}))
    _keys(sanity, set(SANITY), "[sanity]")
    scope = {"models": names, "defenses": [p.name for p in plugins["defenses"]],
             "detectors": [p.name for p in plugins["detectors"]]}
    cfg = RunConfig(
        name=str(d.get("name", "run")), seed=int(d.get("seed", 0)),
        batch_size=int(d.get("batch_size", 500)), device=d.get("device"),
        workers=int(d.get("workers", 0)), data=DataSpec(**data),
        models=[ModelSpec(**m) for m in models],
        attacks=[_attack_spec(a, i, scope) for i, a in enumerate(d.get("attacks", []))],
        defenses=plugins["defenses"], detectors=plugins["detectors"],
        shifts=tuple(int(s) for s in probes.get("shifts", (1, 2))),
        noise=tuple(float(s) for s in probes.get("noise", (0.05,))),
        gallery=int(report.pop("gallery", 8)), report=report, sanity={**SANITY, **sanity},
        adaptive=_adaptive(dict(d.get("adaptive", {}))))
    _check(cfg)
    return cfg


def _check(cfg: RunConfig) -> None:
    if not cfg.models:
        raise ConfigError("the configuration lists no [[models]]")
    if not cfg.attacks:
        raise ConfigError("the configuration lists no [[attacks]]")
    if cfg.batch_size < 1 or (cfg.data.n is not None and cfg.data.n < 1):
        raise ConfigError("batch_size and data.n must be >= 1")
    if cfg.workers < 0:
        raise ConfigError(f"workers must be >= 0 (0: one per CPU core), got {cfg.workers}")
    if not cfg.name or any(c in cfg.name for c in "/\\") or cfg.name.startswith("."):
        raise ConfigError(f"run name {cfg.name!r} must be a plain directory name")
    if any(s < 0 for s in cfg.noise) or cfg.gallery < 0:
        raise ConfigError("probe noise and report.gallery must be non-negative")
    detectors = [d.name for d in cfg.detectors]
    if len(set(detectors)) != len(detectors):
        raise ConfigError(f"detector names must be distinct (scores are stored by name), got "
                          f"{detectors}")


def parse_config(text: str) -> RunConfig:
    """Parse TOML text into a :class:`RunConfig`."""
    try:
        return config_from_dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}") from exc


def load_config(path: str | os.PathLike | None = None) -> RunConfig:
    """Read a TOML configuration file; None gives the built-in tour (:data:`DEFAULT_TOML`)."""
    if path is None:
        return parse_config(DEFAULT_TOML)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no configuration file at {p}")
    return parse_config(p.read_text())
