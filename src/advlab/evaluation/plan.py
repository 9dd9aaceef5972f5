"""The plan: a configuration becomes typed cells, each with one key, and cells become shards.

A *cell* is one (model, defense, attack, params, seed, data subset); its key is the hash of
its canonical JSON (``spec``), which also holds fingerprints of the model weights and of the
data, the batch size (random starts depend on it) and the advlab version. Five kinds:

- :class:`NaiveCell`: a configured attack at one eps of its grid, as the attack's scope
  (:class:`~advlab.evaluation.config.AttackSpec`) allows, scored by the detectors in scope;
- :class:`DefenseCell`: the adaptive attack on a defended model (``[adaptive]``): the
  defense's own (BPDA / EOT on a differentiable surrogate), else PGD on the logit margin;
- :class:`DetectorCell`: :class:`~advlab.detectors.DetectorAwarePGD` against a detector with
  a differentiable score (Carlini & Wagner 2017, arXiv:1705.07263);
- :class:`SanityCell`: the adaptive attack a fired sanity finding names;
- :class:`CurveCell`: a robustness curve, one minimum-norm run confirmed on a grid.

Each cell's eps is resolved here, once (a bounded attack without one takes its default).
A cell over n images is cut into :class:`Shard` s of ``shard_size`` images (whole batches,
so that the sharded cell equals the unsharded one), each computed and stored on its own.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

import advlab
from advlab import attacks
from advlab.detectors.registry import detector_class
from advlab.errors import ConfigError
from advlab.evaluation import curve
from advlab.evaluation.config import AUTO_BATCH, AttackSpec, PluginSpec, RunConfig
from advlab.evaluation.curve import CurveAttack
from advlab.evaluation.results import DETECTION_FPR, attack_norm, reference_eps
from advlab.evaluation.store import canonical_json, cell_key


@dataclass(frozen=True, kw_only=True)
class Cell:
    """What every cell has: its key and canonical spec, a label for progress lines, the
    model's name, the defense, the eps (None: a minimum-norm attack), the number ``n`` of
    leading evaluation images (None: all) and the target selection (None: untargeted)."""

    kind: ClassVar[str]
    key: str
    spec: dict[str, Any]
    label: str
    model: str
    defense: PluginSpec
    eps: float | None
    n: int | None
    target: str | None


@dataclass(frozen=True, kw_only=True)
class NaiveCell(Cell):
    """A configured attack (``params`` without eps) and the detectors that score it."""

    kind: ClassVar[str] = "attack"
    attack: str
    params: dict[str, Any]
    detectors: tuple[PluginSpec, ...] = ()

    def build(self, seed: int) -> attacks.Attack:
        """The configured attack at the cell's eps."""
        kw = self.params if self.eps is None else {**self.params, "eps": self.eps}
        return attacks.get(self.attack, **kw, seed=seed)


@dataclass(frozen=True, kw_only=True)
class CurveCell(Cell):
    """A robustness curve (``[[curves]]``): one minimum-norm run confirmed on a grid, whose
    rows' ``norm`` column holds each example's smallest adversarial radius."""

    kind: ClassVar[str] = "curve"
    attack: ClassVar[str] = "curve"
    curve: dict[str, Any]  # the settings of :func:`advlab.evaluation.curve.from_names`
    norm: str

    def build(self, seed: int) -> CurveAttack:
        """The curve's attack (:class:`~advlab.evaluation.curve.CurveAttack`)."""
        return curve.from_names(**self.curve, seed=seed)


@dataclass(frozen=True, kw_only=True)
class DefenseCell(Cell):
    """The defended model's adaptive attack in norm ``norm``."""

    kind: ClassVar[str] = "defense"
    norm: str


@dataclass(frozen=True, kw_only=True)
class DetectorCell(Cell):
    """DetectorAwarePGD against ``detector`` (``steps``, weight ``lam``)."""

    kind: ClassVar[str] = "detector"
    detector: PluginSpec
    norm: str
    steps: int
    lam: float


@dataclass(frozen=True, kw_only=True)
class SanityCell(Cell):
    """The attack a sanity finding names, with its settings, on the defense's surrogate
    when ``on_surrogate``."""

    kind: ClassVar[str] = "sanity"
    attack: str
    params: dict[str, Any]
    on_surrogate: bool


@dataclass(frozen=True)
class Shard:
    """Images ``start:stop`` of a cell's images, shard ``index`` of ``count``."""

    cell: Cell
    index: int
    count: int
    start: int
    stop: int


def shards(cell: Cell, n_images: int, shard_size: int | None) -> list[Shard]:
    """The cell's shards over its ``cell.n or n_images`` images (one when no shard_size).

    Raises:
        ConfigError: a shard_size that is not whole batches of the cell.
    """
    bs = cell.spec["batch_size"]
    if shard_size is not None and shard_size % (AUTO_BATCH if bs == "auto" else bs):
        raise ConfigError(f"shard_size ({shard_size}) must be a multiple of batch_size "
                          f"({cell.spec['batch_size']})")
    n = min(cell.n or n_images, n_images)
    size = shard_size or max(n, 1)
    count = max(math.ceil(n / size), 1)
    return [Shard(cell, i, count, i * size, min((i + 1) * size, n)) for i in range(count)]


def plugin_key(spec: PluginSpec) -> str:
    """A defense's or detector's identity: canonical JSON of its name and parameters."""
    return canonical_json({"name": spec.name, "params": spec.params})


def detectors_of(cell: Cell) -> tuple[PluginSpec, ...]:
    """The detectors a cell measures: those scoring a naive cell, or the one attacked."""
    if isinstance(cell, DetectorCell):
        return (cell.detector,)
    return cell.detectors if isinstance(cell, NaiveCell) else ()


def resolve_eps(a: AttackSpec, eps: float | None) -> float | None:
    """A bounded attack without an eps gets its default eps, written into the key."""
    if eps is not None:
        return eps
    default = attacks.get(a.name, **a.params).eps
    return float(default) if isinstance(default, (int, float)) else None


class Planner:
    """Builds the cells of one run (its data and model fingerprints)."""

    def __init__(self, cfg: RunConfig, model_fps: dict[str, str], data_fp: str,
                 n_data: int | None) -> None:
        self.cfg, self.fps, self.n_data = cfg, model_fps, n_data
        self.data = {"name": cfg.data.name, "split": cfg.data.split, "n": cfg.data.n,
                     "fingerprint": data_fp}

    def cell(self, cls: type[Cell], model: str, d: PluginSpec, name: str,
             values: dict[str, Any], n: int | None, label: str,
             extra: dict[str, Any] | None = None, **fields: Any) -> Any:
        """A cell of class ``cls``: attack ``name``; ``values`` (its params, eps and target
        included) and ``extra`` go into its spec; ``fields`` are the class's own."""
        n = None if n is None or (self.n_data is not None and n >= self.n_data) else n
        data = self.data if n is None else {**self.data, "subset": n}
        spec = {"model": {"name": model, "fingerprint": self.fps[model]},
                "defense": {"name": d.name, "params": d.params}, "attack": name,
                "params": values, "seed": self.cfg.seed, "data": data,
                "batch_size": self.cfg.batch_size, "advlab": advlab.__version__,
                **({} if self.cfg.precision == "fp32" else {"precision": self.cfg.precision}),
                **(extra or {})}
        sub = "" if n is None else f" n={n}"
        return cls(key=cell_key(spec), spec=spec, label=f"{model} / {d.name} / {label}{sub}",
                   model=model, defense=d, eps=values.get("eps"), n=n,
                   target=values.get("target"), **fields)

    def naive(self) -> list[NaiveCell]:
        """The configured attacks' cells: model x defense x attack x eps, in scope."""
        out = []
        for m in self.cfg.models:
            for d in self.cfg.defenses:
                for a in (a for a in self.cfg.attacks if a.runs_on(m.name, d.name)):
                    dets = () if d.name != "none" else \
                        tuple(t for t in self.cfg.detectors if a.scored_by(t.name))
                    for e in a.eps:
                        eps = resolve_eps(a, e)
                        out.append(self.cell(NaiveCell, m.name, d, a.name, {
                            **a.params, "eps": eps, "target": a.target}, a.n,
                            f"{a.name} eps={eps}", attack=a.name, params=a.params,
                            detectors=dets))
        return out

    def curves(self) -> list[CurveCell]:
        """The configured curves' cells: model x defense x curve, in scope (norm resolved
        from the minimum-norm attack when not given)."""
        out = []
        for m in self.cfg.models:
            for d in self.cfg.defenses:
                for c in (c for c in self.cfg.curves if c.runs_on(m.name, d.name)):
                    settings = c.settings()
                    norm = curve.from_names(**settings).norm
                    out.append(self.cell(
                        CurveCell, m.name, d, "curve", {"norm": norm, "target": None}, c.n,
                        f"curve {c.minnorm} + {c.bounded or 'no grid'} ({norm})",
                        {"curve": settings}, curve=settings, norm=norm))
        return out

    def adaptive(self, naive: list[NaiveCell]) -> list[Cell]:
        """The adaptive counterparts of the bounded naive cells: the defense's adaptive
        attack for defended cells, the detector-aware PGD for each differentiable detector
        scoring an undefended cell."""
        ad, out = self.cfg.adaptive, []
        for c in naive:
            if c.eps is None:  # minimum-norm attacks have no eps to hold an adaptive attack to
                continue
            norm = attack_norm({"attack": c.attack, "params": c.params})
            if c.defense.name != "none":
                out.append(self.cell(DefenseCell, c.model, c.defense, "adaptive", {
                    "eps": c.eps, "norm": norm, "target": c.target}, c.n,
                    f"adaptive eps={c.eps}", {"adaptive": {"against": "defense"}}, norm=norm))
                continue
            for det in c.detectors:
                if not getattr(detector_class(det.name), "differentiable", False):
                    continue
                params = {"eps": c.eps, "norm": norm, "target": c.target,
                          "steps": ad["steps"], "lam": ad["lam"],
                          "threshold_fpr": DETECTION_FPR}
                extra = {"adaptive": {"against": "detector",
                                      "detector": {"name": det.name, "params": det.params}}}
                out.append(self.cell(
                    DetectorCell, c.model, c.defense, "detector-aware-pgd", params, c.n,
                    f"detector-aware pgd vs {det.name} eps={c.eps}", extra, detector=det,
                    norm=norm, steps=ad["steps"], lam=ad["lam"]))
        return out

    def sanity(self, groups: list[SanityGroup]) -> list[SanityCell]:
        """One cell per distinct adaptive attack named by a fired finding of ``groups``
        (its settings, the group's eps, the checks' images); each such finding gets
        ``cell`` = that cell's key."""
        out = []
        for g in groups:
            for f in g.findings or []:
                if f.get("level") != "warning" or not f.get("attack"):
                    continue
                name, kw, sur = f["attack"], dict(f.get("attack_kwargs") or {}), \
                    bool(f.get("on_surrogate"))
                c = self.cell(SanityCell, g.model, g.defense, name,
                              {**kw, "eps": g.eps, "target": None},
                              int(self.cfg.sanity["max_examples"]),
                              f"{name} eps={g.eps} (sanity{', surrogate' if sur else ''})",
                              {"adaptive": {"against": "sanity", "surrogate": sur}},
                              attack=name, params=kw, on_surrogate=sur)
                f["cell"] = c.key
                out.append(c)
        return distinct(out)


def plan_cells(cfg: RunConfig, model_fps: dict[str, str], data_fp: str,
               n_data: int | None = None) -> list[Cell]:
    """Every cell of the matrix, in order: the naive cells, the curves, then the naive
    cells' adaptive counterparts (when ``[adaptive]`` is enabled); duplicates (equal keys)
    once.

    Args:
        n_data: the number of evaluation images (an attack's ``n`` at or above it means all).
    """
    p = Planner(cfg, model_fps, data_fp, n_data)
    naive = p.naive()
    return distinct([*naive, *p.curves(),
                     *(p.adaptive(naive) if cfg.adaptive["enabled"] else [])])


def distinct(cells: list[Any]) -> list[Any]:
    """The first cell of each key, in order."""
    out: dict[str, Any] = {}
    for c in cells:
        out.setdefault(c.key, c)
    return list(out.values())


# ----------------------------------------------------------------------------- sanity groups


@dataclass
class SanityGroup:
    """The sanity checks of one (model, defense) at the reference eps: the success rates of
    its naive attacks there, the key of its findings, and the findings once known."""

    model: str
    defense: PluginSpec
    eps: float
    rates: dict[str, float]
    key: str
    findings: list[dict[str, Any]] | None = field(default=None)


def sanity_groups(cfg: RunConfig, naive: list[dict[str, Any]],
                  specs: dict[str, dict[str, Any]],
                  success: Callable[[str], np.ndarray],
                  flagged: list[SanityGroup] | None = None) -> list[SanityGroup]:
    """Per (model, defense) with stored naive Linf cells at the reference eps, the group of
    its sanity checks; with ``flagged``, instead the groups of those groups' (model,
    defense) at every other Linf eps of their naive cells (the checks, then the ladder, run
    at each eps of a model and defense where a check fired at the reference eps).

    Args:
        naive: the stored naive cells' summaries (:func:`~advlab.evaluation.results.collect`).
        specs: key -> the cell's spec.
        success: key -> the cell's per-example success, in idx order.
        flagged: reference-eps groups whose checks fired.
    """
    ref = reference_eps(naive, cfg.report.get("eps"))
    pairs = {(g.model, canonical_json(vars(g.defense))) for g in flagged or []}
    n, q = int(cfg.sanity["max_examples"]), int(cfg.sanity["blackbox_queries"])
    groups: dict[str, tuple[dict[str, Any], SanityGroup]] = {}
    for c in naive:
        if ref is None or c["eps"] is None or attack_norm(c) != "linf":
            continue
        spec, eps = specs[c["key"]], float(c["eps"])
        if flagged is None and not math.isclose(eps, ref) or flagged is not None and (
                math.isclose(eps, ref) or (c["model"], canonical_json(spec["defense"]))
                not in pairs):
            continue
        gid = canonical_json([spec["model"], spec["defense"], eps])
        if gid not in groups:
            ident = {"model": spec["model"], "defense": spec["defense"], "eps": eps,
                     "data": {k: v for k, v in spec["data"].items() if k != "subset"},
                     "max_examples": n, "queries": q, "seed": cfg.seed,
                     "advlab": advlab.__version__}
            groups[gid] = (ident, SanityGroup(c["model"], PluginSpec(**spec["defense"]), eps,
                                              {}, ""))
        g = groups[gid][1]
        # an attack run twice at this eps (the grid, and a subset): its best rate
        rate = float(success(c["key"])[:n].mean())
        g.rates[c["attack"]] = max(g.rates.get(c["attack"], 0.0), rate)
    for ident, g in groups.values():
        g.key = cell_key({**ident, "rates": g.rates, "kind": "sanity"})
    return [g for _, g in groups.values()]
