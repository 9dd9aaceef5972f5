"""Experiment configuration: what :func:`advlab.evaluation.run` evaluates.

A run is described by a TOML file (or the equivalent mapping): the data subset, the models,
the defenses, the attacks with their eps grids and parameters, the detectors, the fragility
probes, the sanity checks, the adaptive cells, report options, and where the work runs
(``shard_size``, ``[execution]``). :data:`DEFAULT_TOML` (the package file ``tour.toml``) is
the built-in tour of the lecture; ``advlab run`` with no file runs it. Every field is validated
with a clear :class:`~advlab.errors.ConfigError` naming the allowed keys.

Which cells exist is said in one place, each attack's scope (:class:`AttackSpec`): its first
``n`` images, the ``models``, ``defenses`` and ``detectors`` it runs with. ``[adaptive]``
switches the automatic adaptive cells (see :mod:`advlab.evaluation.plan`) and sets the
detector-aware attack's ``steps`` and weight ``lam``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from advlab import attacks
from advlab.errors import ConfigError, InputError, UnknownNameError
from advlab.evaluation import curve, schema
from advlab.models import ModelSpec, model_spec

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the same parser, as tomli
    import tomli as tomllib  # type: ignore[no-redef]

#: the built-in tour of the lecture (``advlab run`` with no file), shipped as package data
TOUR = Path(__file__).with_name("tour.toml")
DEFAULT_TOML = TOUR.read_text(encoding="utf-8")

# ----------------------------------------------------------------------------- configuration


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
class CurveSpec:
    """A robustness curve (``[[curves]]``): one run of the minimum-norm attack ``minnorm``
    (with ``params``), confirmed at each radius of ``grid`` by the bounded attack ``bounded``
    (with ``bounded_params``; ``bounded = "none"`` in the file: no confirmation), see
    :mod:`advlab.evaluation.curve`. ``norm``, when given, goes to both attacks. Its scope
    (``n``, ``models``, ``defenses``) is an attack's (:class:`AttackSpec`).
    """

    grid: tuple[float, ...]
    minnorm: str = "fab"
    params: dict[str, Any] = field(default_factory=dict)
    bounded: str | None = "apgd-ce"
    bounded_params: dict[str, Any] = field(default_factory=dict)
    norm: str | None = None
    n: int | None = None
    models: tuple[str, ...] | None = None
    defenses: tuple[str, ...] | None = None

    runs_on = AttackSpec.runs_on

    def settings(self) -> dict[str, Any]:
        """What builds its attack (:func:`advlab.evaluation.curve.from_names`)."""
        return {"minnorm": self.minnorm, "params": self.params, "bounded": self.bounded,
                "bounded_params": self.bounded_params, "grid": list(self.grid),
                "norm": self.norm}


@dataclass(frozen=True)
class PluginSpec:
    """A defense or detector: a name and its parameters (``none`` is no defense)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSpec:
    """The evaluation images: ``n`` images of ``split`` of data set ``name`` (None: all; more
    than the split holds is an error, not a silent cut), chosen by ``subset`` ("first", or a
    seeded "random" or "stratified" draw); detectors and trained defenses fit on up to
    ``fit_n`` images of ``train_split``. ``resize`` (H, W) and ``channels`` (1 or 3) adapt the
    images to the model (see :func:`advlab.data.load`)."""

    name: str = "mnist5k"
    split: str = "test"
    n: int | None = 1000
    train_split: str = "train"
    fit_n: int | None = 2000
    root: str | None = None
    resize: tuple[int, int] | None = None
    channels: int | None = None
    subset: str = "first"

    def relative_to(self, base: Path) -> DataSpec:
        """The same spec with its relative paths (``folder:``/``npz:`` PATH, root) read from
        folder ``base``."""
        def rebase(p: str) -> str:
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else base / q)

        kind, sep, path = self.name.partition(":")
        name = f"{kind}:{rebase(path)}" if sep and path else self.name
        root = None if self.root is None else rebase(self.root)
        return replace(self, name=name, root=root)


#: the first batch size that ``batch_size = "auto"`` tries (halved on CUDA out-of-memory)
AUTO_BATCH = 1024


@dataclass(frozen=True)
class ExecutionSpec:
    """Where the shards run (``[execution]``): ``executor`` is "processes" (forked workers of
    this machine, the default), "inline" (this process, for tests and debugging) or "ray"
    (a Ray cluster at ``address``, None: a local one); a Ray task asks for ``cpus`` CPUs and,
    where CUDA is used, ``gpus`` GPUs."""

    executor: str = "processes"
    address: str | None = None
    cpus: float = 1.0
    gpus: float = 1.0


@dataclass
class RunConfig:
    """Everything :func:`run` needs; build it from TOML with :func:`load_config`."""

    name: str = "tour"
    seed: int = 0
    batch_size: int | str = 500  # or "auto": halved on CUDA out-of-memory (see measure)
    device: str | None = None  # cpu, cuda, cuda:N or auto (None: cpu)
    precision: str = "fp32"  # the attacks' forward and backward: fp32, bf16 or fp16
    workers: int = 0  # processes computing cells on CPU; 0: one per core (see execute)
    shard_size: int | None = None  # images per stored shard of a cell (None: one shard)
    execution: ExecutionSpec = field(default_factory=lambda: ExecutionSpec())
    data: DataSpec = field(default_factory=DataSpec)
    models: list[ModelSpec] = field(default_factory=list)
    attacks: list[AttackSpec] = field(default_factory=list)
    curves: list[CurveSpec] = field(default_factory=list)
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
            "shard_size": self.shard_size, "execution": vars(self.execution),
            "device": self.device, "precision": self.precision, "data": vars(self.data),
            "models": [m.to_dict() for m in self.models],
            "attacks": [{"name": a.name, "eps": list(a.eps), "params": a.params,
                         "target": a.target, "n": a.n, "models": _list(a.models),
                         "defenses": _list(a.defenses), "detectors": _list(a.detectors)}
                        for a in self.attacks],
            "curves": [{**c.settings(), "bounded": c.bounded or "none", "n": c.n,
                        "models": _list(c.models), "defenses": _list(c.defenses)}
                       for c in self.curves],
            "defenses": [vars(d) for d in self.defenses],
            "detectors": [vars(d) for d in self.detectors],
            "probes": {"shifts": list(self.shifts), "noise": list(self.noise)},
            "report": {"gallery": self.gallery, **self.report},
            "sanity": self.sanity,
            "adaptive": self.adaptive,
        }


def _list(v: tuple[str, ...] | None) -> list[str] | None:
    return None if v is None else list(v)


#: defaults of the [sanity] table
SANITY: dict[str, Any] = {"enabled": True, "max_examples": 100, "blackbox_queries": 500,
                          "ladder_steps": 100, "ladder_square_queries": 1000,
                          "ladder_label_queries": 1000, "ladder_distill_epochs": 4}

#: defaults of the [adaptive] table: whether the runner adds adaptive cells (a defense's own
#: adaptive attack, the detector-aware PGD against each detector, the attacks that fired
#: sanity findings name), and the detector-aware PGD's steps and weight lam of its detector term
ADAPTIVE: dict[str, Any] = {"enabled": True, "steps": 20, "lam": 1.0}


def _names(v: list[str] | None, known: list[str], where: str) -> tuple[str, ...] | None:
    """A scope list: names among ``known`` (None when not given)."""
    if v is None:
        return None
    unknown = sorted(set(v) - set(known))
    if unknown:
        raise ConfigError(f"{where} names {unknown}, which the configuration does not "
                          f"define; defined: {', '.join(dict.fromkeys(known)) or 'none'}")
    return tuple(v)


def _attack_spec(d: dict[str, Any], i: int, scope: dict[str, list[str]]) -> AttackSpec:
    where = f"attacks[{i}]"
    if d["name"] not in attacks.available():
        raise UnknownNameError("attack", d["name"], list(attacks.available()))
    if "eps" in d.get("params", {}):
        raise ConfigError(f"{where}: give eps as the attack's 'eps' grid, not in params")
    return AttackSpec(d["name"], tuple(d.get("eps", [None])), d.get("params", {}),
                      d.get("target"), d.get("n"),
                      *(_names(d.get(k), scope[k], f"{where}.{k}")
                        for k in ("models", "defenses", "detectors")))


def _curve_spec(d: dict[str, Any], i: int, scope: dict[str, list[str]]) -> CurveSpec:
    """A [[curves]] table (types checked by the schema); its attacks are built once here, so
    that a wrong name, parameter or norm is an error before any work."""
    spec = CurveSpec(
        tuple(sorted(set(d["grid"]))), d.get("minnorm", "fab"), d.get("params", {}),
        None if d.get("bounded") == "none" else d.get("bounded", "apgd-ce"),
        d.get("bounded_params", {}), d.get("norm"), d.get("n"),
        *(_names(d.get(k), scope[k], f"curves[{i}].{k}") for k in ("models", "defenses")))
    tax = attacks.available().get(spec.bounded or "")
    if tax is not None and not tax.bounded:
        raise ConfigError(f"curves[{i}].bounded: {spec.bounded!r} is a minimum-norm attack; "
                          "the grid is confirmed by a bounded one (apgd-ce, pgd, ...)")
    if "eps" in spec.bounded_params:
        raise ConfigError(f"curves[{i}]: the bounded attack runs at each radius of 'grid', "
                          "give no eps in bounded_params")
    try:
        curve.from_names(**spec.settings())
    except InputError as exc:
        raise ConfigError(f"curves[{i}]: {exc}") from None
    return spec


def _data(d: dict[str, Any]) -> DataSpec:
    """The [data] table (types checked by the schema): resize as one size or [H, W],
    channels 1 or 3."""
    if d.get("resize") is not None:
        r = d["resize"] if len(d["resize"]) == 2 else d["resize"] * 2
        if len(r) != 2:
            raise ConfigError(f"data.resize must be a size or [height, width], got {r!r}")
        d["resize"] = tuple(r)
    if d.get("channels") not in (None, 1, 3):
        raise ConfigError(f"data.channels must be 1 or 3, got {d['channels']!r}")
    return DataSpec(**d)


def _distinct(names: list[str], what: str) -> None:
    if len(set(names)) != len(names):
        raise ConfigError(f"{what} names must be distinct (results are stored by name), "
                          f"got {names}")


def _execution(d: dict[str, Any]) -> ExecutionSpec:
    """The [execution] table (types checked by the schema): an address only for Ray."""
    spec = ExecutionSpec(**d)
    if spec.address is not None and spec.executor != "ray":
        raise ConfigError("[execution].address is the address of a Ray cluster (a string, "
                          "with executor = \"ray\")")
    return spec


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Validate a configuration mapping (the parsed TOML) and build a :class:`RunConfig`.

    Every key is checked against :data:`advlab.evaluation.schema.CONFIG` first (types,
    ranges, NaN, empty values, unknown keys), then the keys that refer to each other.

    Raises:
        ConfigError: unknown keys, wrong types or ranges, no models or no attacks,
            references to names the configuration does not define.
        UnknownNameError: an attack name that is not registered.
    """
    d = schema.CONFIG(d, "")
    if not d.get("models"):
        raise ConfigError("the configuration lists no [[models]]")
    if not d.get("attacks") and not d.get("curves"):
        raise ConfigError("the configuration lists no [[attacks]] (nor [[curves]])")
    models = [model_spec(m, f"models[{i}]") for i, m in enumerate(d["models"])]
    plugins = {kind: [PluginSpec(p["name"], p.get("params", {}))
                      for p in d.get(kind, [{"name": "none"}] if kind == "defenses" else [])]
               for kind in ("defenses", "detectors")}
    names = [m.name for m in models]
    _distinct(names, "model")
    _distinct([p.name for p in plugins["detectors"]], "detector")
    scope = {"models": names, "defenses": [p.name for p in plugins["defenses"]],
             "detectors": [p.name for p in plugins["detectors"]]}
    probes, report = d.get("probes", {}), d.get("report", {})
    cfg = RunConfig(
        name=d.get("name", "run"), seed=d.get("seed", 0), batch_size=d.get("batch_size", 500),
        device=d.get("device"), precision=d.get("precision", "fp32"),
        workers=d.get("workers", 0), shard_size=d.get("shard_size"),
        execution=_execution(d.get("execution", {})),
        data=_data(d.get("data", {})), models=models,
        attacks=[_attack_spec(a, i, scope) for i, a in enumerate(d.get("attacks", []))],
        curves=[_curve_spec(c, i, scope) for i, c in enumerate(d.get("curves", []))],
        defenses=plugins["defenses"], detectors=plugins["detectors"],
        shifts=tuple(probes.get("shifts", (1, 2))), noise=tuple(probes.get("noise", (0.05,))),
        gallery=report.get("gallery", 8),
        report={k: v for k, v in report.items() if k != "gallery"},
        sanity={**SANITY, **d.get("sanity", {})}, adaptive={**ADAPTIVE, **d.get("adaptive", {})})
    bs = AUTO_BATCH if cfg.batch_size == "auto" else cfg.batch_size
    if cfg.shard_size is not None and cfg.shard_size % bs:
        raise ConfigError(f"shard_size ({cfg.shard_size}) must be a multiple of batch_size "
                          f"({cfg.batch_size}{', that is 1024' if bs != cfg.batch_size else ''})"
                          ": a shard is whole batches, so that a sharded cell equals the "
                          "unsharded one")
    return cfg


def validate(cfg: RunConfig) -> RunConfig:
    """Check a :class:`RunConfig` built in Python as :func:`config_from_dict` checks a file.

    Returns:
        The configuration, rebuilt from its checked mapping.

    Raises:
        ConfigError, UnknownNameError: as :func:`config_from_dict`.
    """
    if not isinstance(cfg, RunConfig):
        raise ConfigError(f"config must be a RunConfig, got {type(cfg).__name__}")
    return config_from_dict(_present({**cfg.to_dict(), "workers": cfg.workers}))


def _present(v: Any) -> Any:
    """A mapping without its None values (keys left out), recursively through tables and
    lists."""
    if isinstance(v, dict):
        return {k: _present(e) for k, e in v.items() if e is not None}
    if isinstance(v, (list, tuple)):
        return [_present(e) for e in v]
    return v


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
    try:
        cfg = parse_config(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not a UTF-8 text file (TOML is UTF-8): {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration {p}: {exc.strerror}") from None
    base = p.resolve().parent  # relative paths in the file are read from its folder
    cfg.models = [m.relative_to(base) for m in cfg.models]
    cfg.data = cfg.data.relative_to(base)
    return cfg
