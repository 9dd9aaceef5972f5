"""The measurement: (model, defense, attack, a shard of images) -> the per-example rows.

:func:`measure` attacks a (defended) model on a shard of a cell's images, batch by batch,
and measures, per example:

- the attack itself: clean and adversarial prediction and confidence, success, norms,
  SSIM, queries;
- *probes*: the same clean and adversarial images shown to the other models (transfer) and
  to the attacked model after small transformations (fragility);
- the configured detectors' scores on the clean and the adversarial images;
- a few image pairs for the report's gallery.

A shard is whole batches of its cell and batch b of the cell draws its randomness from seed
``seed + b`` wherever it is computed, so a cell measured in shards equals the cell measured
at once. :func:`attack_for` builds the attack a cell names (the adaptive ones included).

The tasks that executors run (:mod:`advlab.evaluation.execute`) end the module: measure a
shard, fit a detector, run a group's sanity checks; each gets the run's shared
:class:`Context` and fitted detectors, and one small picklable item.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advlab import attacks
from advlab import models as models_
from advlab.detectors import DetectorAwarePGD
from advlab.detectors import registry as detector_registry
from advlab.evaluation import ladder, metrics, sanity
from advlab.evaluation.adaptive import defense_attack
from advlab.evaluation.config import AUTO_BATCH, PluginSpec
from advlab.evaluation.context import Context
from advlab.evaluation.plan import (
    Cell,
    CurveCell,
    DefenseCell,
    DetectorCell,
    NaiveCell,
    SanityCell,
    SanityGroup,
    Shard,
    detectors_of,
    plugin_key,
)
from advlab.evaluation.results import DETECTION_FPR
from advlab.evaluation.store import CellRecord, pick_gallery

log = logging.getLogger(__name__)


@dataclass
class CellPlan:
    """What to compute for one attacked model (used by the runner and the CLI's attack)."""

    attack: attacks.Attack
    target: str | None = None
    surrogate: nn.Module | None = None  # run the attack on it, judge on the model
    transfer: dict[str, nn.Module] = field(default_factory=dict)
    shifts: Sequence[int] = (1, 2)
    noise: Sequence[float] = (0.05,)
    detectors: dict[str, Any] = field(default_factory=dict)
    gallery: int = 8
    batch_size: int | str = 500  # "auto": AUTO_BATCH, halved on CUDA out-of-memory
    seed: int = 0
    clean: dict[tuple, Tensor] | None = None  # memo of the clean side, see _clean
    precision: str = "fp32"  # the attack's forward and backward (advlab.models.autocast)
    notes: list[dict[str, Any]] = field(default_factory=list)  # per-batch ladder summaries


def _softmax_top(logits: Tensor) -> tuple[Tensor, Tensor]:
    p = logits.float().softmax(1)
    conf, pred = p.max(1)
    return pred, conf


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


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
            start: int) -> dict[str, tuple[Tensor, Tensor]]:
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
                start: int) -> tuple[dict[str, np.ndarray], dict, dict, Tensor]:
    with torch.no_grad():
        clean_logits = _clean(plan, ("logits", len(x)), start, lambda: model(x))
    target = None
    if plan.target is not None:
        g = torch.Generator(device=x.device).manual_seed(seed)
        target = attacks.choose_target(clean_logits, y, plan.target, g)
    attacked = model if plan.surrogate is None else plan.surrogate
    res = plan.attack(models_.autocast(attacked, plan.precision), x, y, target)
    if "ladder" in res.info:  # the rungs climbed and the findings settled, per batch
        plan.notes.append(res.info["ladder"])
    adv_logits, success = res.logits, res.success
    if plan.surrogate is not None or plan.precision != "fp32":
        # judged on the real (defended) model, in fp32
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


def measure(plan: CellPlan, model: nn.Module, x: Tensor, y: Tensor, *, start: int = 0,
            on_batch: Callable[[int, int], None] | None = None) -> CellRecord:
    """Attack ``model`` on (x, y), images ``start:start+len(x)`` of a cell, batch by batch,
    and measure everything (see the module's docstring).

    Args:
        plan: the attack and what to measure besides.
        model: the attacked (possibly defended) model, eval mode, on x's device.
        x, y: images N x C x H x W in [0, 1] and int64 labels (N,).
        start: the first image's row in the cell, a multiple of ``plan.batch_size``.
        on_batch: called with (batch done, batches) after each batch.

    Returns:
        A :class:`CellRecord` without key and spec (the caller sets them); ``idx`` counts
        from ``start``; its gallery holds the shard's first candidates (:func:`pick_gallery`).
    """
    t0, started = time.perf_counter(), time.time()
    auto = plan.batch_size == "auto"
    bs = first = AUTO_BATCH if auto else int(plan.batch_size)
    parts, probe_parts, score_parts, advs = [], [], [], []
    done = 0
    while done < len(x):
        sl, row = slice(done, done + bs), start + done
        seed = plan.seed + start // first + len(parts)  # batch b of the cell: seed + b
        try:
            rows, probes, scores, x_adv = _batch_rows(plan, model, x[sl], y[sl], seed, row)
        except torch.cuda.OutOfMemoryError:
            if not auto or bs == 1:
                raise
            bs //= 2
            log.warning("CUDA out of memory: batch size halved to %d, batch retried", bs)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        rows["idx"] = np.arange(row, row + len(x_adv))
        parts.append(rows)
        probe_parts.append(probes)
        score_parts.append(scores)
        advs.append(x_adv.cpu())
        done += len(x_adv)
        if on_batch is not None:
            on_batch(len(parts), len(parts) + math.ceil((len(x) - done) / bs))
    rows = _concat(parts)
    x_adv = torch.cat(advs)
    gallery = [(int(rows["idx"][i]), _np(x[i].float()), _np(x_adv[i].float()))
               for i in pick_gallery(rows, plan.gallery)]
    return CellRecord(key="", spec={}, examples=rows, probes=_concat(probe_parts),
                      scores=_concat(score_parts), gallery=gallery, started=started,
                      finished=time.time(), wall_s=time.perf_counter() - t0,
                      device=str(x.device), info={"attack": repr(plan.attack),
                                                  "batch_size": bs,
                                                  "precision": plan.precision,
                                                  **({"ladder": plan.notes} if plan.notes
                                                     else {})})


# ----------------------------------------------------------------------------- the attacks


def adaptive_attack(model: nn.Module, eps: float, norm: str, seed: int, lam: float,
                    clean: Callable[[], Tensor]) -> tuple[str, attacks.Attack, nn.Module | None]:
    """The adaptive attack on a defended model at ``eps``: the defense's own
    (:func:`~advlab.evaluation.adaptive.defense_attack`; with a detector,
    :class:`~advlab.detectors.DetectorAwarePGD` against it too, weight ``lam``, at the
    threshold that flags :data:`DETECTION_FPR` of the ``clean()`` images), else PGD on the
    C&W margin of the model's logits, 100 steps.

    Returns:
        (the attack's name, the attack, the surrogate to run it on or None for the model).
    """
    pgd = "pgd" if norm == "linf" else f"pgd-{norm}"
    a = defense_attack(model, norm, (pgd, {"loss": "margin", "steps": 100}))
    if a.detector is not None:
        return "detector-aware-pgd", DetectorAwarePGD(
            a.detector.calibrated(clean(), DETECTION_FPR), lam=lam, eps=eps, norm=norm,
            steps=int(a.kwargs.get("steps", 100)), seed=seed), a.surrogate
    return a.name, attacks.get(a.name, **a.kwargs, eps=eps, seed=seed), a.surrogate


def attack_for(cell: Cell, model: nn.Module, clean: Callable[[], Tensor],
               detectors: dict[str, Any], seed: int, lam: float, base: nn.Module | None = None,
               train: Tensor | None = None) -> tuple[str, attacks.Attack, nn.Module | None]:
    """The attack of ``cell`` on the (defended) ``model``, given its fitted ``detectors``
    (name -> detector) and ``clean()``, the cell's images (fetched only where needed). The
    adaptive-attack ladder transfers from the undefended ``base`` model and distills a
    surrogate from the ``train`` images.

    The detector-aware attack knows the detector and its threshold: the one that flags
    :data:`~advlab.evaluation.results.DETECTION_FPR` of the cell's clean images, where the
    report measures what gets through.

    Returns:
        (the attack's name, the attack, the surrogate to run it on or None for the model).
    """
    if isinstance(cell, (NaiveCell, CurveCell)):  # the configured attack, or curve
        return cell.attack, cell.build(seed), None
    assert cell.eps is not None
    if isinstance(cell, DefenseCell):
        return adaptive_attack(model, cell.eps, cell.norm, seed, lam, clean)
    if isinstance(cell, DetectorCell):
        det = detectors[cell.detector.name]
        return "detector-aware-pgd", DetectorAwarePGD(
            det.calibrated(clean(), DETECTION_FPR), lam=cell.lam, eps=cell.eps,
            norm=cell.norm, steps=cell.steps, seed=seed), None
    assert isinstance(cell, SanityCell)
    if cell.attack == ladder.NAME:
        return cell.attack, ladder.Ladder(**cell.params, eps=cell.eps, seed=seed).with_data(
            base if cell.defense.name != "none" else None, train), None
    surrogate = model.adaptive().model if cell.on_surrogate else None
    return cell.attack, attacks.get(cell.attack, **cell.params, eps=cell.eps, seed=seed), \
        surrogate


# ----------------------------------------------------------------------------- tasks


Detectors = dict[tuple[str, str], Any]  # (model, detector key) -> fitted, without model_


def _attached(det: Any, model: nn.Module) -> Any:
    """A fitted detector shipped without its model (``model_``), given it back here."""
    if getattr(det, "model_", None) is None:
        det.model_ = model
    return det


def measure_shard(ctx: Context, detectors: Detectors, shard: Shard,
                  on_batch: Callable[[int, int], None] | None = None) -> CellRecord:
    """The task of one shard: build its cell's attack (on the cell's images) and
    :func:`measure` the shard's images."""
    cell, s = shard.cell, ctx.settings
    model = ctx.defended[(cell.model, plugin_key(cell.defense))]
    n = min(cell.n or len(ctx.images), len(ctx.images))
    x, y = ctx.images.rows(shard.start, shard.stop)
    dets = {d.name: _attached(detectors[(cell.model, plugin_key(d))], ctx.models[cell.model])
            for d in detectors_of(cell)}
    name, atk, surrogate = attack_for(cell, model, lambda: ctx.images.rows(0, n)[0], dets,
                                      s.seed, s.lam,
                                      ctx.models[cell.model],
                                      None if ctx.train is None else ctx.train[0])
    transfer = {k: m for k, m in ctx.models.items()
                if k != cell.model or cell.defense.name != "none"}
    plan = CellPlan(atk, cell.target, surrogate, transfer, s.shifts, s.noise, dets, s.gallery,
                    s.batch_size, s.seed, ctx.clean.setdefault(id(model), {}), s.precision)
    rec = measure(plan, model, x, y, start=shard.start, on_batch=on_batch)
    rec.key, rec.spec = cell.key, cell.spec
    if not isinstance(cell, NaiveCell):
        rec.info.update(adaptive_attack=name, surrogate=surrogate is not None)
    return rec


def fit_detector(ctx: Context, detectors: Detectors, what: tuple[str, PluginSpec],
                 on_batch: Callable[[int, int], None] | None = None) -> Any:
    """The task fitting detector ``what[1]`` on model ``what[0]``: the fitted detector,
    sent back without its model (``model_``), which the driver has."""
    name, spec = what
    assert ctx.train is not None
    det = detector_registry.get(spec.name, **spec.params)
    det = det.fit(ctx.models[name], *ctx.train) or det
    det.model_ = None
    return det


def sanity_checks(ctx: Context, detectors: Detectors, group: SanityGroup,
                  on_batch: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """The task of one group's sanity checks (:func:`advlab.evaluation.sanity.run_all`) on
    its defended model: the findings, as JSON-able dicts."""
    s = ctx.settings
    net = ctx.defended[(group.model, plugin_key(group.defense))]
    return [_finding(f) for f in sanity.run_all(
        net, *ctx.images.rows(0, s.sanity_n), eps=group.eps, norm="linf", results=group.rates,
        max_examples=s.sanity_n, blackbox_queries=s.sanity_queries, seed=s.seed,
        ladder=s.ladder)]


def _finding(f: Any) -> dict[str, Any]:
    """A sanity finding (``to_dict()``, dataclass, object or dict) as JSON-able dict."""
    if hasattr(f, "to_dict"):
        f = f.to_dict()
    elif dataclasses.is_dataclass(f):
        f = dataclasses.asdict(f)
    elif not isinstance(f, dict):
        f = vars(f)
    return json.loads(json.dumps(f, default=str))
