"""The experiment matrix: models x defenses x attacks (x eps), resumable, cell by cell.

A *cell* is one (model, defense, attack, params, seed, data subset); its key is the hash of
its canonical JSON, which also holds fingerprints of the model weights and of the data, the
batch size (random starts depend on it) and the advlab version. :func:`run` plans the cells of
a :class:`~advlab.evaluation.config.RunConfig`, skips those already in the results database,
and computes the rest one by one, batch by batch:

- the attack on the (defended) model, with per-example success, norms, SSIM and queries;
- *probes*: the same clean and adversarial images shown to the other models (transfer) and
  to the attacked model after small transformations (fragility);
- the configured detectors' scores on the clean and the adversarial images;
- a few image pairs for the report's gallery.

Each attack's *scope* (:class:`~advlab.evaluation.config.AttackSpec`: ``n``, ``models``,
``defenses``, ``detectors``) says which cells it contributes. Next to these naive cells the
runner adds *adaptive* cells (``[adaptive]``), each stored and resumed like any other:

- for every defended cell, the defense's own adaptive attack (``model.adaptive()``: BPDA /
  EOT on a differentiable surrogate, the examples judged on the real defended model), else
  PGD on the logit margin, at the same eps on the same images;
- for every detector with a differentiable score and every bounded undefended cell it
  scores, :class:`~advlab.detectors.DetectorAwarePGD` that also descends the detector's
  score (Carlini & Wagner 2017, arXiv:1705.07263);
- for every sanity finding that fires, the adaptive attack it names.

On CPU the cells run on ``workers`` processes (one per core by default), forked with one
torch thread each: most cells are small batches that keep one core busy, so cells side by
side use the machine better than torch's threads inside one cell (the tour: 1.8x faster on
2 cores). Each finished cell is stored in one transaction (:mod:`advlab.evaluation.store`)
as it arrives, so an interrupted run loses at most the cells in flight. The library logs
and reports progress through a callback; it never prints.

Defenses and detectors come from :mod:`advlab.defenses` and :mod:`advlab.detectors` through
small adapters (:data:`DEFENSES`, :func:`build_detector`); when those packages are missing,
their cells are skipped with a log message.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import json
import logging
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import advlab
from advlab import attacks
from advlab.errors import AdvlabError, ConfigError
from advlab.evaluation import ladder, metrics, sanity
from advlab.evaluation.config import (
    AttackSpec,
    DataSpec,
    ModelSpec,
    PluginSpec,
    RunConfig,
    load_config,
)
from advlab.evaluation.results import (
    DETECTION_FPR,
    attack_norm,
    collect,
    defense_label,
    reference_eps,
)
from advlab.evaluation.store import CellRecord, Store, canonical_json, cell_key

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- plugins


def optional_module(name: str) -> Any | None:
    """Import an optional advlab package (defenses, detectors) or return None."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            return None
        raise


class Unavailable(AdvlabError):
    """A cell that cannot run in this installation (a missing optional package)."""


TrainData = Callable[[], tuple[Tensor, Tensor]]
DefenseAdapter = Callable[[Any, nn.Module, TrainData, dict[str, Any], int], nn.Module]


def _adversarial_training(mod: Any, model: nn.Module, train: TrainData, p: dict[str, Any],
                          seed: int) -> nn.Module:
    p = dict(p)
    atk = attacks.get(p.pop("attack", "pgd"), **p.pop("attack_params", {}), seed=seed)
    return mod.adversarial_training(model, *train(), attack=atk, **p)


def _distillation(mod: Any, model: nn.Module, train: TrainData, p: dict[str, Any],
                  seed: int) -> nn.Module:
    out = mod.distill(model, *train(), **p)
    return out[-1] if isinstance(out, tuple) else out  # (teacher, student) -> student


def _transformed(mod: Any, model: nn.Module, train: TrainData, p: dict[str, Any],
                 seed: int) -> nn.Module:
    layers = []
    for t in p.get("transforms", []):
        t = dict(t)
        layers.append(getattr(mod, t.pop("name"))(**t))
    rest = {k: v for k, v in p.items() if k != "transforms"}
    return mod.Transformed(model, layers, **{"seed": seed, **rest})


#: defense name -> adapter(advlab.defenses module, model, train data loader, params, seed)
#: returning the defended model. Add an entry to plug a new defense into the runner.
DEFENSES: dict[str, DefenseAdapter] = {
    "adversarial-training": _adversarial_training,
    "distillation": _distillation,
    "transformed": _transformed,
}


#: defenses whose result is a retrained copy of the model (same architecture): cached by
#: :meth:`Runner.defended` under ``$ADVLAB_HOME/defenses`` like the zoo models.
TRAINED = ("adversarial-training", "distillation")


def defense_builder(spec: PluginSpec) -> Callable[[nn.Module, TrainData, int], nn.Module]:
    """What builds defense ``spec`` (not "none"): (model, train data loader, seed) -> the
    defended model, in eval mode.

    Raises:
        Unavailable: :mod:`advlab.defenses` is not installed.
        UnknownNameError: no adapter for that defense name.
    """
    mod = optional_module("advlab.defenses")
    if mod is None:
        raise Unavailable(f"defense {spec.name!r} needs advlab.defenses, not available")
    if spec.name not in DEFENSES:
        raise advlab.errors.UnknownNameError("defense", spec.name, ["none", *DEFENSES])
    adapter = DEFENSES[spec.name]
    return lambda model, train, seed: adapter(mod, model, train, spec.params, seed).eval()


def defend(spec: PluginSpec, model: nn.Module, train: TrainData, seed: int) -> nn.Module:
    """The model behind defense ``spec`` ("none": the model itself), in eval mode (raises as
    :func:`defense_builder`)."""
    return model if spec.name == "none" else defense_builder(spec)(model, train, seed)


def detector_class(spec: PluginSpec) -> type | None:
    """The class of detector ``spec`` in :mod:`advlab.detectors` (the class whose name
    matches, ignoring case, '-' and '_'); None when the package is not installed.

    Raises:
        UnknownNameError: no detector of that name.
    """
    mod = optional_module("advlab.detectors")
    if mod is None:
        return None
    classes = {k.lower(): v for k, v in vars(mod).items()
               if isinstance(v, type) and hasattr(v, "score") and hasattr(v, "fit")}
    key = spec.name.replace("-", "").replace("_", "").lower()
    if key not in classes:
        raise advlab.errors.UnknownNameError("detector", spec.name, list(classes))
    return classes[key]


def build_detector(spec: PluginSpec, model: nn.Module, train: TrainData) -> Any:
    """A detector from :mod:`advlab.detectors` (:func:`detector_class`), ``.fit(model, x, y)``.

    Raises:
        Unavailable: :mod:`advlab.detectors` is not installed.
        UnknownNameError: no detector of that name.
    """
    cls = detector_class(spec)
    if cls is None:
        raise Unavailable(f"detector {spec.name!r} needs advlab.detectors, not available")
    det = cls(**spec.params)
    return det.fit(model, *train()) or det


def detection_threshold(detector: Any, x: Tensor) -> float:
    """The score above which ``detector`` flags :data:`DETECTION_FPR` of the clean images x
    (not stored on the detector, which the run's cells share)."""
    return metrics.calibrate_threshold(detector.score(x), DETECTION_FPR)


def adaptive_attack(model: nn.Module, eps: float, norm: str, seed: int, lam: float,
                    x: Tensor) -> tuple[str, attacks.Attack, nn.Module | None]:
    """The adaptive attack on a defended model at ``eps``: the defense's own
    (:func:`~advlab.evaluation.sanity.defense_attack`; with a detector,
    :class:`~advlab.detectors.DetectorAwarePGD` against it too, weight ``lam``, at the
    threshold that flags :data:`DETECTION_FPR` of the clean images ``x``), else PGD on the
    C&W margin of the model's logits, 100 steps.

    Returns:
        (the attack's name, the attack, the surrogate to run it on or None for the model).
    """
    pgd = "pgd" if norm == "linf" else f"pgd-{norm}"
    a = sanity.defense_attack(model, norm, (pgd, {"loss": "margin", "steps": 100}))
    if a.detector is not None:
        from advlab.detectors import DetectorAwarePGD

        return "detector-aware-pgd", DetectorAwarePGD(
            a.detector, lam=lam, threshold=detection_threshold(a.detector, x), eps=eps, norm=norm,
            steps=int(a.kwargs.get("steps", 100)), seed=seed), a.surrogate
    return a.name, attacks.get(a.name, **a.kwargs, eps=eps, seed=seed), a.surrogate


# ----------------------------------------------------------------------------- models, data


def fingerprint_model(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the model's parameters and buffers, names included."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint_data(x: Tensor, y: Tensor) -> str:
    """sha256 (16 hex digits) of the images and labels."""
    h = hashlib.sha256()
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def load_model(spec: ModelSpec) -> nn.Module:
    """A zoo model or a cached robust model (:data:`advlab.defenses.ROBUST`, such as
    ``mnist-cnn-trades``) by name, or a user's safetensors weights for a zoo architecture;
    trained on first use and cached."""
    from advlab import zoo

    if spec.file is None:
        defenses = optional_module("advlab.defenses")
        if defenses is not None and spec.name in defenses.ROBUST:
            return defenses.load_robust(spec.name)
        return zoo.load(spec.name)
    return zoo.load_weights(zoo.build(spec.arch), spec.file).eval()


def load_data(spec: DataSpec, split: str | None = None,
              n: int | None = None) -> tuple[Tensor, Tensor]:
    """The first ``n`` images of a split of the configured data set."""
    from advlab import data

    return data.load(spec.name, split=split or spec.split, root=spec.root, n=n)


def class_names(spec: DataSpec) -> list[str] | None:
    """The data set's class names when advlab.data knows them (for the report)."""
    from advlab import data

    try:
        return list(data.info(spec.name, spec.root).classes)
    except AdvlabError as exc:
        log.info("no class names for %s: %s", spec.name, exc)
        return None


# ----------------------------------------------------------------------------- one cell


@dataclass(frozen=True)
class Progress:
    """A progress event: ``event`` is "plan" (cells known), "skip" (a stored or unavailable
    cell), "cell" (a cell starts), "batch" (a batch of it is done) or "done" (it is stored).
    ``cell`` counts from 1 of ``cells``; ``batch`` from 1 of ``batches``."""

    event: str
    cell: int = 0
    cells: int = 0
    label: str = ""
    batch: int = 0
    batches: int = 0


ProgressFn = Callable[[Progress], None]


def _softmax_top(logits: Tensor) -> tuple[Tensor, Tensor]:
    p = logits.float().softmax(1)
    conf, pred = p.max(1)
    return pred, conf


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@dataclass
class CellPlan:
    """What to compute for one attacked model (used by :func:`run` and the CLI's attack)."""

    attack: attacks.Attack
    target: str | None = None
    surrogate: nn.Module | None = None  # run the attack on it, judge on the model
    transfer: dict[str, nn.Module] = field(default_factory=dict)
    shifts: Sequence[int] = (1, 2)
    noise: Sequence[float] = (0.05,)
    detectors: dict[str, Any] = field(default_factory=dict)
    gallery: int = 8
    batch_size: int = 500
    seed: int = 0
    clean: dict[tuple, Tensor] | None = None  # memo of the clean side, see _clean
    notes: list[dict[str, Any]] = field(default_factory=list)  # per-batch ladder summaries


def _clean(plan: CellPlan, what: tuple, start: int, fn: Callable[[], Tensor]) -> Tensor:
    """The clean-image side of a measurement (logits, probes, detector scores): the same for
    every cell on the same model, images and seed, so computed once when ``plan.clean`` is a
    memo shared by those cells (keyed by ``what`` and the batch's first row)."""
    if plan.clean is None:
        return fn()
    key = (*what, start, plan.seed)
    if key not in plan.clean:
        plan.clean[key] = fn()
    return plan.clean[key]


def _probes(plan: CellPlan, model: nn.Module, x: Tensor, x_adv: Tensor, seed: int,
            start: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """Name -> (logits on the clean images, logits on the adversarial images)."""
    def both(what: tuple, f: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        return _clean(plan, (*what, len(x)), start, lambda: f(x)), f(x_adv)

    def noisy(sigma: float) -> Callable[[Tensor], Tensor]:  # the same noise on both sides
        return lambda v: model(metrics.gaussian_noise(
            v, sigma, torch.Generator(device=v.device).manual_seed(seed)))

    out = {}
    with torch.no_grad():
        for name, other in plan.transfer.items():
            out[f"transfer:{name}"] = both(("transfer", name), other)
        for s in plan.shifts:
            out[f"shift:{s}"] = both(("shift", s), lambda v, s=s: model(metrics.translate(v, s)))
        for sigma in plan.noise:
            out[f"noise:{sigma:g}"] = both(("noise", sigma, seed), noisy(sigma))
    return out


def _batch_rows(plan: CellPlan, model: nn.Module, x: Tensor, y: Tensor, seed: int,
                start: int = 0) -> tuple[dict[str, np.ndarray], dict, dict, Tensor]:
    with torch.no_grad():
        clean_logits = _clean(plan, ("logits", len(x)), start, lambda: model(x))
    target = None
    if plan.target is not None:
        g = torch.Generator(device=x.device).manual_seed(seed)
        target = attacks.choose_target(clean_logits, y, plan.target, g)
    res = plan.attack(model if plan.surrogate is None else plan.surrogate, x, y, target)
    if "ladder" in res.info:  # the rungs climbed and the findings settled, per batch
        plan.notes.append(res.info["ladder"])
    adv_logits, success = res.logits, res.success
    if plan.surrogate is not None:  # the examples are judged on the real (defended) model
        with torch.no_grad():
            adv_logits = model(res.x_adv)
        success = attacks.is_success(adv_logits, y, res.target)
    clean_pred, clean_conf = _softmax_top(clean_logits)
    adv_pred, adv_conf = _softmax_top(adv_logits)
    n = len(x)
    sim = metrics.ssim(x, res.x_adv) if min(x.shape[2:]) >= 7 else \
        torch.full((n,), float("nan"), device=x.device)
    rows = {
        "label": _np(y), "clean_pred": _np(clean_pred), "clean_conf": _np(clean_conf),
        "adv_pred": _np(adv_pred), "adv_conf": _np(adv_conf),
        "target": np.full(n, None) if res.target is None else _np(res.target),
        "success": _np(success), "ssim": _np(sim.double()).astype(np.float64),
        "queries": np.full(n, None) if res.queries is None else _np(res.queries),
        **{k: _np(v.double()) for k, v in res.norms.items()},
    }
    probes = {}
    for name, (lc, la) in _probes(plan, model, x, res.x_adv, seed, start).items():
        pc, cc = _softmax_top(lc)
        pa, ca = _softmax_top(la)
        probes[name] = {"clean_pred": _np(pc), "clean_conf": _np(cc),
                        "adv_pred": _np(pa), "adv_conf": _np(ca)}
    scores = {}
    for name, det in plan.detectors.items():
        with torch.no_grad():
            clean = _clean(plan, ("score", name, id(det), len(x)), start,
                           lambda det=det: det.score(x))
            scores[name] = {"clean": _np(clean.double()),
                            "adv": _np(det.score(res.x_adv).double())}
    return rows, probes, scores, res.x_adv.detach()


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in parts[0].items():
        out[k] = _concat([p[k] for p in parts]) if isinstance(v, dict) else \
            np.concatenate([p[k] for p in parts])
    return out


def _pick_gallery(rows: dict[str, np.ndarray], k: int) -> list[int]:
    """Up to k examples: correct and fooled first, then correct and not fooled, then the
    misclassified ones."""
    ok = rows["clean_pred"] == rows["label"]
    s = rows["success"].astype(bool)
    order = np.concatenate([np.flatnonzero(ok & s), np.flatnonzero(ok & ~s), np.flatnonzero(~ok)])
    return [int(i) for i in order[:k]]


def evaluate(plan: CellPlan, model: nn.Module, x: Tensor, y: Tensor,
             on_batch: Callable[[int, int], None] | None = None) -> CellRecord:
    """Attack ``model`` on (x, y) batch by batch and measure everything for one cell.

    Args:
        plan: the attack and what to measure besides.
        model: the attacked (possibly defended) model, eval mode, on x's device.
        x, y: images N x C x H x W in [0, 1] and int64 labels (N,).
        on_batch: called with (batch done, batches) after each batch.

    Returns:
        A :class:`CellRecord` without key and spec (the caller sets them).
    """
    t0, started = time.perf_counter(), time.time()
    bs = plan.batch_size
    batches = math.ceil(len(x) / bs)
    parts, probe_parts, score_parts, advs = [], [], [], []
    for b in range(batches):
        sl = slice(b * bs, (b + 1) * bs)
        rows, probes, scores, x_adv = _batch_rows(plan, model, x[sl], y[sl], plan.seed + b,
                                                  sl.start)
        rows["idx"] = np.arange(sl.start, sl.start + len(x_adv))
        parts.append(rows)
        probe_parts.append(probes)
        score_parts.append(scores)
        advs.append(x_adv.cpu())
        if on_batch is not None:
            on_batch(b + 1, batches)
    rows = _concat(parts)
    x_adv = torch.cat(advs)
    gallery = [(i, _np(x[i].float()), _np(x_adv[i].float()))
               for i in _pick_gallery(rows, plan.gallery)]
    return CellRecord(key="", spec={}, examples=rows, probes=_concat(probe_parts),
                      scores=_concat(score_parts), gallery=gallery, started=started,
                      finished=time.time(), wall_s=time.perf_counter() - t0,
                      device=str(x.device), info={"attack": repr(plan.attack),
                                                  **({"ladder": plan.notes} if plan.notes
                                                     else {})})


# ----------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Cell:
    """One planned cell: its key, canonical spec and a short label for progress lines.

    ``kind`` is "attack" (a configured attack, run naively), "defense" (the adaptive attack
    on a defended model), "detector" (the detector-aware attack against ``detector``) or
    "sanity" (the attack a sanity finding names: ``sanity`` = (attack, settings, whether on
    the surrogate)). ``n`` is the number of leading evaluation images (None: all).
    """

    key: str
    spec: dict[str, Any]
    label: str
    model: str
    defense: PluginSpec
    attack: AttackSpec
    eps: float | None
    n: int | None = None
    kind: str = "attack"
    detector: PluginSpec | None = None
    sanity: tuple[str, dict[str, Any], bool] | None = None


def _resolve_eps(a: AttackSpec, eps: float | None) -> float | None:
    """A bounded attack without an eps gets its default eps, written into the key."""
    if eps is not None:
        return eps
    default = attacks.get(a.name, **a.params).eps
    return float(default) if isinstance(default, (int, float)) else None


class _Planner:
    """Builds the cells' specs; one per run (the data and model fingerprints)."""

    def __init__(self, cfg: RunConfig, model_fps: dict[str, str], data_fp: str,
                 n_data: int | None) -> None:
        self.cfg, self.fps, self.n_data = cfg, model_fps, n_data
        self.data = {"name": cfg.data.name, "split": cfg.data.split, "n": cfg.data.n,
                     "fingerprint": data_fp}

    def subset(self, n: int | None) -> int | None:
        """The effective number of leading images (None: all of them)."""
        return None if n is None or (self.n_data is not None and n >= self.n_data) else n

    def cell(self, kind: str, model: str, d: PluginSpec, a: AttackSpec, eps: float | None,
             attack: str, params: dict[str, Any], n: int | None, label: str,
             extra: dict[str, Any] | None = None, **fields: Any) -> Cell:
        n = self.subset(n)
        data = self.data if n is None else {**self.data, "subset": n}
        spec = {"model": {"name": model, "fingerprint": self.fps[model]},
                "defense": {"name": d.name, "params": d.params}, "attack": attack,
                "params": params, "seed": self.cfg.seed, "data": data,
                "batch_size": self.cfg.batch_size, "advlab": advlab.__version__,
                **(extra or {})}
        sub = "" if n is None else f" n={n}"
        return Cell(cell_key(spec), spec, f"{model} / {d.name} / {label}{sub}", model, d, a,
                    eps, n, kind, **fields)


def plan_cells(cfg: RunConfig, model_fps: dict[str, str], data_fp: str,
               n_data: int | None = None) -> list[Cell]:
    """Every cell of the matrix, in order: the naive cells (model, defense, attack, eps, as
    the attacks' scopes allow), then their adaptive counterparts (when ``[adaptive]`` is
    enabled); duplicates (equal keys) once.

    Args:
        n_data: the number of evaluation images (an attack's ``n`` at or above it means all).
    """
    plan = _Planner(cfg, model_fps, data_fp, n_data)
    naive = []
    for m in cfg.models:
        for d in cfg.defenses:
            for a in cfg.attacks:
                if not a.runs_on(m.name, d.name):
                    continue
                for e in a.eps:
                    eps = _resolve_eps(a, e)
                    params = {**a.params, "eps": eps, "target": a.target}
                    naive.append(plan.cell("attack", m.name, d, a, eps, a.name, params, a.n,
                                           f"{a.name} eps={eps}"))
    cells = naive + (_adaptive_cells(cfg, plan, naive) if cfg.adaptive["enabled"] else [])
    return _distinct(cells)


def _distinct(cells: list[Cell]) -> list[Cell]:
    """The first cell of each key, in order."""
    out: dict[str, Cell] = {}
    for c in cells:
        out.setdefault(c.key, c)
    return list(out.values())


def _adaptive_cells(cfg: RunConfig, plan: _Planner, naive: list[Cell]) -> list[Cell]:
    """The adaptive counterparts of the naive bounded cells: the defense's adaptive attack
    for defended cells, the detector-aware PGD for each differentiable detector scoring an
    undefended cell."""
    ad = cfg.adaptive
    differentiable = {d.name: bool(getattr(detector_class(d), "differentiable", False))
                      for d in cfg.detectors}
    out = []
    for c in naive:
        a, eps = c.attack, c.eps
        if eps is None:  # minimum-norm attacks have no eps to hold an adaptive attack to
            continue
        norm = attack_norm({"attack": a.name, "params": a.params})
        if c.defense.name != "none":
            out.append(plan.cell("defense", c.model, c.defense, a, eps, "adaptive",
                                 {"eps": eps, "norm": norm, "target": a.target}, c.n,
                                 f"adaptive eps={eps}", {"adaptive": {"against": "defense"}}))
            continue
        for det in cfg.detectors:
            if not (a.scored_by(det.name) and differentiable[det.name]):
                continue
            params = {"eps": eps, "norm": norm, "target": a.target, "steps": ad["steps"],
                      "lam": ad["lam"], "threshold_fpr": DETECTION_FPR}
            extra = {"adaptive": {"against": "detector",
                                  "detector": {"name": det.name, "params": det.params}}}
            out.append(plan.cell("detector", c.model, c.defense, a, eps, "detector-aware-pgd",
                                 params, c.n, f"detector-aware pgd vs {det.name} eps={eps}",
                                 extra, detector=det))
    return out


def sanity_cells(cfg: RunConfig, plan: _Planner, groups: list[dict[str, Any]],
                 specs: dict[str, PluginSpec]) -> list[Cell]:
    """One cell per distinct adaptive attack named by a fired sanity finding (its settings,
    the group's eps, the checks' images); each finding gets ``cell`` = that cell's key."""
    out = []
    for g in groups:
        d = specs[g["defense_key"]]
        for f in g["findings"]:
            if f.get("level") != "warning" or not f.get("attack"):
                continue
            name, kw, sur = f["attack"], dict(f.get("attack_kwargs") or {}), \
                bool(f.get("on_surrogate"))
            a = AttackSpec(name, (g["eps"],), kw)
            params = {**kw, "eps": g["eps"], "target": None}
            c = plan.cell("sanity", g["model"], d, a, g["eps"], name, params,
                          int(cfg.sanity["max_examples"]),
                          f"{name} eps={g['eps']} (sanity{', surrogate' if sur else ''})",
                          {"adaptive": {"against": "sanity", "surrogate": sur}},
                          sanity=(name, kw, sur))
            f["cell"] = c.key
            out.append(c)
    return _distinct(out)


def environment(device: torch.device, seed: int) -> dict[str, Any]:
    """Versions, machine and settings, for the report's environment section."""
    return {"advlab": advlab.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": _version("scikit-learn"), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device), "cuda": torch.cuda.get_device_name(device)
            if device.type == "cuda" else None, "seed": seed}


def _finding(f: Any) -> dict[str, Any]:
    """A sanity finding (``to_dict()``, dataclass, object or dict) as JSON-able dict."""
    if hasattr(f, "to_dict"):
        f = f.to_dict()
    elif dataclasses.is_dataclass(f):
        f = dataclasses.asdict(f)
    elif not isinstance(f, dict):
        f = vars(f)
    return json.loads(json.dumps(f, default=str))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- workers

#: a job: its work (run on a worker) and what to do with the result (here, in the parent)
Job = tuple[Callable[[], Any], Callable[[Any], None]]

_FORKED: list[Callable[[], Any]] = []  # the tasks of the running pool, inherited by fork


def _run_forked(i: int) -> Any:
    return _FORKED[i]()


def worker_count(requested: int, device: torch.device) -> int:
    """Processes for computing cells: ``requested``, or one per core when 0; always 1 on
    CUDA and where processes cannot be forked (only Linux forks safely with torch loaded)."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return 1
    return requested or len(os.sched_getaffinity(0))


def parallel(tasks: list[Callable[[], Any]], workers: int) -> Iterator[tuple[int, Any]]:
    """(i, tasks[i]()) for every task, in the order they finish.

    With ``workers`` > 1 the tasks run in forked processes of one torch thread each: a
    small batch keeps one core busy, not two, so cells in parallel use the machine better
    than torch's threads inside one cell. The tasks and the models, detectors and data they
    hold are inherited by the fork, never pickled; only the results travel back. A task's
    error is raised here; a worker that dies raises ``BrokenProcessPool``.
    """
    global _FORKED
    if workers <= 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            yield i, task()
        return
    _FORKED = tasks
    pool = ProcessPoolExecutor(min(workers, len(tasks)), multiprocessing.get_context("fork"),
                               initializer=torch.set_num_threads, initargs=(1,))
    try:
        futures = {pool.submit(_run_forked, i): i for i in range(len(tasks))}
        for f in as_completed(futures):
            yield futures[f], f.result()
    finally:  # on an error or an interrupt, queued tasks are dropped, running ones end
        pool.shutdown(wait=False, cancel_futures=True)
        _FORKED = []


def run_jobs(jobs: list[Job], workers: int) -> None:
    """Run each job's work (see :func:`parallel`) and hand its result to the job's handler,
    here, as the results arrive."""
    for j, out in parallel([work for work, _ in jobs], workers):
        jobs[j][1](out)


class Runner:
    """Runs a :class:`RunConfig` into a :class:`Store`; see :func:`run`."""

    def __init__(self, cfg: RunConfig, store: Store, device: torch.device,
                 models: dict[str, nn.Module] | None = None,
                 data: tuple[Tensor, Tensor] | None = None,
                 train_data: tuple[Tensor, Tensor] | None = None,
                 progress: ProgressFn | None = None) -> None:
        self.cfg, self.store, self.device = cfg, store, device
        self.workers = worker_count(cfg.workers, device)
        self.progress = progress or (lambda p: None)
        self._given_models = models or {}
        self._data, self._train = data, train_data
        self._defended: dict[tuple[str, str], nn.Module] = {}
        self._clean: dict[int, dict[tuple, Tensor]] = {}  # id(model) -> CellPlan.clean
        self._detectors: dict[tuple[str, str], Any] = {}

    # -- lazy inputs ----------------------------------------------------------------------

    def models(self) -> dict[str, nn.Module]:
        out = {}
        for spec in self.cfg.models:
            m = self._given_models.get(spec.name)
            if m is None:
                m = load_model(spec)
            elif _device_of(m) != self.device:
                m = copy.deepcopy(m)  # never move the caller's model
            out[spec.name] = m.to(self.device).eval()
        return out

    def train(self) -> tuple[Tensor, Tensor]:
        if self._train is None:
            self._train = load_data(self.cfg.data, self.cfg.data.train_split,
                                    self.cfg.data.fit_n)
        x, y = self._train
        return x.to(self.device), y.to(self.device)

    def defended(self, name: str, base: nn.Module, spec: PluginSpec) -> nn.Module:
        key = (name, canonical(spec))
        if key not in self._defended:
            if spec.name != "none":
                log.info("building defense %s for %s", spec.name, name)
            self._defended[key] = self._trained(name, base, spec) if spec.name in TRAINED \
                else defend(spec, base, self.train, self.cfg.seed)
        return self._defended[key]

    def _trained(self, name: str, base: nn.Module, spec: PluginSpec) -> nn.Module:
        """A trained defense from ``$ADVLAB_HOME/defenses``, keyed by the model's weights,
        the defense, the seed, the training data and advlab's version (like the cells);
        trained and cached (atomically) when missing or unusable."""
        from advlab import zoo

        build = defense_builder(spec)  # an unavailable defense fails here, before any work
        x, y = self.train()
        key = canonical_json({"model": fingerprint_model(base), "defense": canonical(spec),
                              "seed": self.cfg.seed, "data": fingerprint_data(x, y),
                              "advlab": advlab.__version__})
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = advlab.data.home() / "defenses" / f"{name}-{spec.name}-{digest}.safetensors"
        if path.exists():
            try:
                return zoo.load_weights(copy.deepcopy(base), path).eval()
            except AdvlabError as exc:
                log.warning("unusable cached defense %s (%s); retraining", path, exc)
        model = build(base, self.train, self.cfg.seed)
        zoo.save(model, path, {"model": name, "defense": spec.name, "params": spec.params,
                               "seed": self.cfg.seed})
        return model

    def detector(self, name: str, model: nn.Module, spec: PluginSpec) -> Any:
        """Detector ``spec`` fitted on the undefended model ``name`` (fitted once per run)."""
        key = (name, canonical(spec))
        if key not in self._detectors:
            log.info("fitting detector %s on %s", spec.name, name)
            self._detectors[key] = build_detector(spec, model, self.train)
        return self._detectors[key]

    def detectors(self, cell: Cell, model: nn.Module) -> dict[str, Any]:
        """The detectors scoring a naive cell (see :meth:`_detector_specs`)."""
        return {d.name: self.detector(cell.model, model, d) for d in self._detector_specs(cell)}

    def _detector_specs(self, cell: Cell) -> list[PluginSpec]:
        """The detectors a cell uses: the one a detector-aware cell attacks, or those in a
        naive attack's scope when the model is undefended (a detector is fitted on the
        model it protects)."""
        if cell.kind == "detector":
            assert cell.detector is not None
            return [cell.detector]
        if cell.kind != "attack" or cell.defense.name != "none":
            return []
        return [d for d in self.cfg.detectors if cell.attack.scored_by(d.name)]

    def _fits(self, cells: list[Cell], models: dict[str, nn.Module]
              ) -> dict[tuple[str, str], Job]:
        """Key -> job fitting each detector that ``cells`` use and the run has not fitted yet
        (a detector whose package is missing is left to its cells to skip)."""
        specs = {(c.model, canonical(d)): (c.model, d) for c in cells
                 for d in self._detector_specs(c)}
        specs = {k: v for k, v in specs.items()
                 if k not in self._detectors and detector_class(v[1]) is not None}
        if specs:
            self.train()  # loaded once here, inherited by the workers
        return {k: (functools.partial(self._fit, models[name], d),
                    functools.partial(self._fitted, k, models[name]))
                for k, (name, d) in specs.items()}

    def _fit(self, model: nn.Module, spec: PluginSpec) -> Any:
        """A fitted detector, sent back from a worker without its model (``model_``), which
        this process has: nothing of a user's model needs pickling."""
        detector = build_detector(spec, model, self.train)
        detector.model_ = None
        return detector

    def _fitted(self, key: tuple[str, str], model: nn.Module, detector: Any) -> None:
        detector.model_ = model
        log.info("fitted detector %s on %s", key[1], key[0])
        self._detectors[key] = detector

    # -- the run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, t0 = self.cfg, time.perf_counter()
        x, y = self._data if self._data is not None else load_data(cfg.data, n=cfg.data.n)
        x, y = x.to(self.device), y.to(self.device)
        models = self.models()
        fps, data_fp = {k: fingerprint_model(m) for k, m in models.items()}, \
            fingerprint_data(x, y)
        cells = plan_cells(cfg, fps, data_fp, len(x))
        env = environment(self.device, cfg.seed)
        env["classes"] = class_names(cfg.data) if self._data is None else None
        self.store.begin_run(cfg.name, cfg.to_dict(), env, [(c.key, c.spec) for c in cells])
        log.info("run %s: %d cells", cfg.name, len(cells))
        skipped: dict[str, str] = {}
        checks = cfg.sanity.get("enabled", True)
        self._run_cells(cells, models, x, y, skipped, early_sanity=checks)
        findings = self.sanity(models, x, y) if checks else None
        if findings and cfg.adaptive["enabled"]:
            planned = {c.key for c in cells}
            specs = {canonical(d): d for d in cfg.defenses}
            extra = [c for c in sanity_cells(cfg, _Planner(cfg, fps, data_fp, len(x)),
                                             findings, specs) if c.key not in planned]
            self.store.add_run_cells(cfg.name, [(c.key, c.spec) for c in extra])
            self._run_cells(extra, models, x, y, skipped)
        env.update(wall_s=time.perf_counter() - t0, skipped=skipped)
        if findings is not None:
            env["sanity"] = [{k: v for k, v in g.items() if k != "defense_key"}
                             for g in findings]
        self.store.end_run(cfg.name, env["wall_s"], env)
        return self.store.run(cfg.name)

    def _run_cells(self, cells: list[Cell], models: dict[str, nn.Module], x: Tensor,
                   y: Tensor, skipped: dict[str, str], early_sanity: bool = False) -> None:
        """Compute and store the cells not stored yet, each as soon as it is finished, in
        two rounds on the workers: the detectors the cells need are fitted next to the
        cells that need none; then come the cells that use them and (``early_sanity``, when
        the config fixes the reference eps) the sanity checks of every model and defense
        whose cells are all stored."""
        done = self.store.finished(c.key for c in cells)
        self.progress(Progress("plan", 0, len(cells)))
        log.info("%d cells, %d already stored, %d worker(s)", len(cells), len(done),
                 self.workers)
        todo = []
        for i, cell in enumerate(cells, 1):
            if cell.key in done:
                self.progress(Progress("skip", i, len(cells), cell.label))
            else:
                todo.append((i, cell))
        fits = self._fits([c for _, c in todo], models)
        later = [(i, c) for i, c in todo
                 if any((c.model, canonical(d)) in fits for d in self._detector_specs(c))]
        self._compute([job for job in todo if job not in later], list(fits.values()),
                      len(cells), models, x, y, skipped)
        checks: list[Job] = []
        if early_sanity and self.cfg.report.get("eps") is not None:
            pending = {(c.model, canonical(c.defense)) for _, c in later}
            checks = self._sanity_jobs(models, x, y, self._sanity_groups()[1], lambda g: (
                g["model"], canonical(g["defense"])) not in pending)
        self._compute(later, checks, len(cells), models, x, y, skipped)

    def _compute(self, todo: list[tuple[int, Cell]], extra: list[Job], total: int,
                 models: dict[str, nn.Module], x: Tensor, y: Tensor,
                 skipped: dict[str, str]) -> None:
        """Run the jobs ``extra`` and the cells of ``todo`` (prepared here, in order) on the
        workers; with several, the longest kinds go first (``extra``, then the adaptive
        cells) so that the short ones fill the end."""
        cells = []
        for i, cell in todo:
            try:
                cells.append((i, cell, *self._prepare(cell, models, x, y)))
            except Unavailable as exc:
                log.warning("skipping %s: %s", cell.label, exc)
                skipped[cell.key] = str(exc)
                self.progress(Progress("skip", i, total, cell.label))
        workers = self.workers if len(extra) + len(cells) > 1 else 1
        if workers > 1:
            cells.sort(key=lambda c: c[1].kind == "attack")
        jobs = [*extra, *((self._task(i, total, cell, compute, workers == 1),
                           functools.partial(self._store_cell, i, total, cell, info))
                          for i, cell, info, compute in cells)]
        run_jobs(jobs, workers)

    def _prepare(self, cell: Cell, models: dict[str, nn.Module], x: Tensor, y: Tensor
                 ) -> tuple[dict[str, Any], Callable[[Callable | None], CellRecord]]:
        """What the record says of an adaptive cell's attack, and the cell's computation
        given a per-batch callback."""
        model = self.defended(cell.model, models[cell.model], cell.defense)
        xs, ys = (x, y) if cell.n is None else (x[:cell.n], y[:cell.n])
        name, plan = self._plan(cell, model, models, xs)
        info = {} if cell.kind == "attack" else \
            {"adaptive_attack": name, "surrogate": plan.surrogate is not None}
        return info, lambda on_batch: evaluate(plan, model, xs, ys, on_batch=on_batch)

    def _task(self, i: int, total: int, cell: Cell,
              compute: Callable[[Callable | None], CellRecord], single: bool
              ) -> Callable[[], CellRecord]:
        """Run in this process, a cell reports its start and its batches; in a worker, it
        reports only its end (through the parent)."""
        if not single:
            return lambda: compute(None)

        def run() -> CellRecord:
            self.progress(Progress("cell", i, total, cell.label))
            return compute(lambda b, nb: self.progress(
                Progress("batch", i, total, cell.label, b, nb)))
        return run

    def _store_cell(self, i: int, total: int, cell: Cell, info: dict[str, Any],
                    rec: CellRecord) -> None:
        rec.key, rec.spec = cell.key, cell.spec
        rec.info.update(info)
        self.store.write_cell(rec)
        ok = rec.examples["adv_pred"] == rec.examples["label"]
        log.info("%s: robust accuracy %.3f (%.1f s)", cell.label, ok.mean(), rec.wall_s)
        self.progress(Progress("done", i, total, cell.label))

    def sanity(self, models: dict[str, nn.Module], x: Tensor, y: Tensor
               ) -> list[dict[str, Any]]:
        """Sanity checks (:func:`advlab.evaluation.sanity.run_all`) on every attacked model
        at the report's reference eps, reusing the success rates of the stored naive cells.

        Findings are stored per (model weights, defense, eps, rates, settings), so a rerun
        (or the run's own early checks) does not repeat them.
        """
        eps, groups = self._sanity_groups()
        run_jobs(self._sanity_jobs(models, x, y, groups), self.workers)
        return [{"model": g["model"], "defense": defense_label(vars(g["defense"])),
                 "eps": eps, "findings": self.store.sanity(g["key"]),
                 "defense_key": canonical(g["defense"])} for g in groups]

    def _sanity_groups(self) -> tuple[float | None, list[dict[str, Any]]]:
        """The reference eps and, per (model, defense) with stored naive cells there, the
        success rates of its attacks and the key of its findings."""
        cfg, rec = self.cfg, self.store.run(self.cfg.name)
        naive = [c for c in collect(self.store, cfg.name)["cells"] if c["adaptive"] is None]
        eps = reference_eps(naive, cfg.report.get("eps"))
        n, q = int(cfg.sanity["max_examples"]), int(cfg.sanity["blackbox_queries"])
        groups: dict[str, dict[str, Any]] = {}
        for c in naive:
            if eps is None or c["eps"] is None or attack_norm(c) != "linf" or \
                    not math.isclose(c["eps"], eps):
                continue
            spec = dict(rec["cells"])[c["key"]]
            g = groups.setdefault(canonical_json([spec["model"], spec["defense"]]), {
                "model": c["model"], "defense": PluginSpec(**spec["defense"]), "rates": {},
                "spec": {"model": spec["model"], "defense": spec["defense"], "eps": eps,
                         "data": {k: v for k, v in spec["data"].items() if k != "subset"},
                         "max_examples": n, "queries": q, "seed": cfg.seed,
                         "advlab": advlab.__version__}})
            ex = self.store.examples(c["key"])["success"][:n]
            # an attack run twice at this eps (the grid, and a subset): its best rate
            g["rates"][c["attack"]] = max(g["rates"].get(c["attack"], 0.0), float(ex.mean()))
        for g in groups.values():
            g["eps"] = eps
            g["key"] = cell_key({**g["spec"], "rates": g["rates"], "kind": "sanity"})
        return eps, list(groups.values())

    def _sanity_jobs(self, models: dict[str, nn.Module], x: Tensor, y: Tensor,
                     groups: list[dict[str, Any]],
                     ready: Callable[[dict[str, Any]], bool] = lambda g: True) -> list[Job]:
        """A job per group (of :meth:`_sanity_groups`) that is ``ready`` and not stored."""
        cfg, jobs = self.cfg, []
        n, q = int(cfg.sanity["max_examples"]), int(cfg.sanity["blackbox_queries"])
        for g in groups:
            if not ready(g) or self.store.sanity(g["key"]) is not None:
                continue
            log.info("sanity checks on %s / %s at eps %g", g["model"], g["defense"].name,
                     g["eps"])
            net = self.defended(g["model"], models[g["model"]], g["defense"])
            jobs.append((lambda net=net, g=g: [_finding(f) for f in sanity.run_all(
                net, x, y, eps=g["eps"], norm="linf", results=g["rates"], max_examples=n,
                blackbox_queries=q, seed=cfg.seed, ladder=sanity.ladder_settings(cfg.sanity))],
                lambda findings, g=g: self.store.write_sanity(
                    g["key"], g["model"], g["defense"].name, findings)))
        return jobs

    def _plan(self, cell: Cell, model: nn.Module, models: dict[str, nn.Module], x: Tensor
              ) -> tuple[str, CellPlan]:
        """The attack's name and what to run for ``cell`` on the (defended) ``model`` and the
        cell's images ``x``.

        The detector-aware attack knows the detector and its threshold: the one that flags
        :data:`~advlab.evaluation.results.DETECTION_FPR` of the cell's clean images, where
        the report measures what gets through.
        """
        cfg, a, seed = self.cfg, cell.attack, self.cfg.seed
        surrogate, detectors = None, {}
        if cell.kind == "attack":
            kw = dict(a.params) if cell.eps is None else {**a.params, "eps": cell.eps}
            name, atk = a.name, attacks.get(a.name, **kw, seed=seed)
            detectors = self.detectors(cell, model)
        elif cell.kind == "defense":
            assert cell.eps is not None
            name, atk, surrogate = adaptive_attack(model, cell.eps, cell.spec["params"]["norm"],
                                                   seed, cfg.adaptive["lam"], x)
        elif cell.kind == "detector":
            from advlab.detectors import DetectorAwarePGD

            assert cell.detector is not None
            det = self.detector(cell.model, model, cell.detector)
            p = cell.spec["params"]
            tau = detection_threshold(det, x)
            name, atk = "detector-aware-pgd", DetectorAwarePGD(
                det, lam=p["lam"], threshold=tau, eps=cell.eps, norm=p["norm"],
                steps=p["steps"], seed=seed)
            detectors = {cell.detector.name: det}
        else:
            assert cell.sanity is not None
            name, kw, on_surrogate = cell.sanity
            if name == ladder.NAME:  # the ladder transfers from the undefended model too
                base = models[cell.model] if cell.defense.name != "none" else None
                atk = ladder.Ladder(**kw, eps=cell.eps, seed=seed).with_data(
                    base, self.train()[0])
            else:
                atk = attacks.get(name, **kw, eps=cell.eps, seed=seed)
            surrogate = model.adaptive().model if on_surrogate else None
        transfer = {k: m for k, m in models.items()
                    if k != cell.model or cell.defense.name != "none"}
        return name, CellPlan(attack=atk, target=a.target, surrogate=surrogate,
                              transfer=transfer, shifts=cfg.shifts, noise=cfg.noise,
                              detectors=detectors, gallery=cfg.gallery,
                              batch_size=cfg.batch_size, seed=seed,
                              clean=self._clean.setdefault(id(model), {}))


def canonical(spec: PluginSpec) -> str:
    return canonical_json({"name": spec.name, "params": spec.params})


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return torch.device("cpu") if p is None else p.device


def resolve_device(name: str | None) -> torch.device:
    """A torch device from a name (None: cpu), with a clear error for unavailable CUDA."""
    dev = torch.device(name or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available here")
    return dev


def run(config: RunConfig | None = None, *, root: str | os.PathLike = "runs",
        device: str | None = None, progress: ProgressFn | None = None,
        models: dict[str, nn.Module] | None = None,
        data: tuple[Tensor, Tensor] | None = None,
        train_data: tuple[Tensor, Tensor] | None = None) -> dict[str, Any]:
    """Run an experiment matrix into ``root/advlab.sqlite``, skipping stored cells.

    Args:
        config: the experiment (None: the built-in tour, :data:`DEFAULT_TOML`).
        root: directory of the database and of the run folders.
        device: "cpu" or "cuda" (overrides the config's); data and models are moved there.
        progress: called with :class:`Progress` events (per cell and per batch).
        models: name -> model, used instead of loading the configured model of that name.
        data: (x, y) evaluation images, instead of loading the configured data set.
        train_data: (x, y) for fitting detectors and trained defenses.

    Returns:
        The run's record from the database (name, config, env, cells [(key, spec)], ...).
        Write results.json with :func:`advlab.evaluation.results.write_results`.
    """
    cfg = config or load_config()
    dev = resolve_device(device or cfg.device)
    with Store(Path(root) / "advlab.sqlite") as store:
        return Runner(cfg, store, dev, models, data, train_data, progress).run()
