"""A run's numbers, recomputed from the results database: ``results.json`` and the report's
tables come from :func:`collect`.

Per cell (see :mod:`advlab.evaluation.metrics` for the definitions):
clean and robust accuracy, success rate, median norms and mean SSIM of the successful
adversarial examples, mean confidence of the clean correct and of the wrong adversarial
predictions, median queries, transfer rate to every other model, fragility (how many
successful adversarial examples a small transformation turns back, and how many clean
correct images survive the same transformation), detector AUC, detection rate at 5% FPR and
the rate of attacked inputs both misclassified and undetected there.

Adaptive cells (see :mod:`advlab.evaluation.runner`) carry ``adaptive``: what they attack
("defense", "detector" or "sanity"), the attack that ran, whether on a surrogate, and the
detector; ``label`` names every cell for the report. Curve cells carry ``curve``
(:func:`advlab.evaluation.curve.summary`). ``verdicts`` gives, per model, defense
and eps, the headline robust accuracy (the worst case over every attack) and whether the
sanity findings there are settled (:mod:`advlab.evaluation.verdicts`).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from advlab import attacks
from advlab.evaluation import curve, metrics
from advlab.evaluation.store import Store, atomic_write
from advlab.evaluation.verdicts import verdicts

SCHEMA = "advlab.results/1"
DETECTION_FPR = 0.05


def _f(v: float) -> float | None:
    """JSON-safe float: NaN becomes None."""
    v = float(v)
    return None if math.isnan(v) else v


def _mean(a: np.ndarray) -> float | None:
    return _f(a.mean()) if a.size else None


def attack_norm(cell: dict[str, Any]) -> str:
    """The cell's perturbation norm: its params' norm, else the registry's taxonomy."""
    if "norm" in cell["params"]:
        return str(cell["params"]["norm"])
    tax = attacks.available().get(cell["attack"])
    return tax.norm if tax is not None else "?"


def reference_eps(cells: Sequence[dict[str, Any]], override: float | None = None) -> float | None:
    """The Linf eps at which the gallery, transfer, properties and ROC sections look.

    Default: the smallest eps of the grid at which some naive attack fools at least half of
    the correctly classified images of every model; else the largest eps.
    """
    if override is not None:
        return float(override)
    bounded = [c for c in cells if c["eps"] is not None and attack_norm(c) == "linf"
               and not c.get("adaptive")]
    grid = sorted({c["eps"] for c in bounded if c["eps"] > 0})
    models = {c["model"] for c in bounded}
    for e in grid:
        best = {m: max((c["success_rate"] or 0.0 for c in bounded
                        if c["model"] == m and math.isclose(c["eps"], e)), default=0.0)
                for m in models}
        if best and min(best.values()) >= 0.5:
            return e
    return grid[-1] if grid else None


def summarize_rows(ex: dict[str, np.ndarray], probes: dict[str, dict[str, np.ndarray]],
                   scores: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """The numbers of one cell from its per-example columns (see :class:`CellRecord`)."""
    y, ok, succ = ex["label"], ex["clean_pred"] == ex["label"], ex["success"].astype(bool)
    fooled = ok & succ
    ssim = ex["ssim"].astype(np.float64)
    queries = np.array([-1 if q is None else q for q in ex["queries"]], np.int64)
    out: dict[str, Any] = {
        "n": len(y),
        "clean_accuracy": _f(metrics.accuracy(ex["clean_pred"], y)),
        "robust_accuracy": _f(metrics.robust_accuracy(ex["adv_pred"], y)),
        "success_rate": _f(metrics.success_rate(succ, ex["clean_pred"], y)),
        "fooled": int(fooled.sum()),
        "median_norms": {k: _f(v) for k, v in metrics.median_norms(
            {k: ex[k] for k in ("l0", "l1", "l2", "linf")}, fooled).items()},
        "mean_ssim": _mean(ssim[fooled & ~np.isnan(ssim)]),
        "clean_confidence": _mean(ex["clean_conf"][ok]),
        "wrong_confidence": _f(metrics.wrong_confidence(ex["adv_conf"], ex["adv_pred"], y)),
        "median_queries": None, "transfer": {}, "fragility": {}, "detectors": {},
    }
    if (queries >= 0).any() and fooled.any():
        out["median_queries"] = _f(np.median(queries[fooled]))
    for probe, cols in probes.items():
        kind, _, name = probe.partition(":")
        if kind == "transfer":
            out["transfer"][name] = _f(metrics.transfer_rate(
                fooled, cols["clean_pred"], cols["adv_pred"], y))
        else:
            out["fragility"][probe] = {
                "adversarial_reverted": _f(metrics.revert_rate(cols["adv_pred"], fooled, y)),
                "clean_kept": _f(metrics.accuracy(cols["clean_pred"][ok], y[ok])),
            }
    for det, s in scores.items():
        pos, neg = s["adv"][fooled], s["clean"]
        if pos.size and neg.size:
            tpr, evaded = metrics.detection_at_fpr(neg, s["adv"][ok], fooled[ok],
                                                   DETECTION_FPR)
            out["detectors"][det] = {"auc": metrics.roc_auc(neg, pos), "tpr_at_fpr": _f(tpr),
                                     "undetected": _f(evaded), "fpr": DETECTION_FPR}
    return out


def cell_label(spec: dict[str, Any], info: dict[str, Any]) -> str:
    """How the report names a cell: the attack, with the subset size and, for an adaptive
    cell, what it attacks and how."""
    sub = spec["data"].get("subset")
    n = "" if sub is None else f" [n={sub}]"
    if spec.get("curve"):
        c = spec["curve"]
        return f"curve {c['minnorm']} + {c['bounded'] or 'no grid'}{n}"
    ad = spec.get("adaptive")
    if not ad:
        return spec["attack"] + n
    name = info.get("adaptive_attack", spec["attack"])
    how = " on the BPDA/EOT surrogate" if info.get("surrogate") else ""
    if ad["against"] == "detector":
        return f"adaptive {name} vs {ad['detector']['name']}{n}"
    if ad["against"] == "sanity":
        return f"{name} (sanity{how}){n}"
    return f"adaptive {name}{how}{n}"


def summarize_cell(store: Store, key: str, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The numbers of one stored cell, or None if the cell is not in the database."""
    rec = store.cell(key)
    if rec is None:
        return None
    info, ad = rec["info"], spec.get("adaptive")
    out = {"key": key, "model": spec["model"]["name"], "defense": defense_label(spec["defense"]),
           "attack": spec["attack"], "label": cell_label(spec, info),
           "eps": spec["params"].get("eps"), "params": spec["params"], "seed": spec["seed"],
           "data": spec["data"], "subset": spec["data"].get("subset"),
           "adaptive": None if not ad else {
               **ad, "attack": info.get("adaptive_attack"), "surrogate": info.get("surrogate")}}
    ex = store.examples(key)
    out.update(summarize_rows(ex, store.probes(key), store.scores(key)))
    if spec.get("curve"):  # robust accuracy vs eps, from each example's smallest radius
        out["curve"] = {**curve.summary(ex, spec["params"]["norm"], spec["curve"]["grid"]),
                        "minnorm": spec["curve"]["minnorm"], "bounded": spec["curve"]["bounded"]}
    out.update(wall_s=rec["wall_s"], device=rec["device"], finished=rec["finished"])
    if info.get("ladder"):  # the ladder's rungs and findings, per batch
        out["ladder"] = info["ladder"]
    return out


def defense_label(d: dict[str, Any]) -> str:
    """A defense's name, with the transformations of a "transformed" defense."""
    ts = d.get("params", {}).get("transforms") if d["name"] == "transformed" else None
    if not ts:
        return d["name"]
    parts = [t["name"] + "(" + ", ".join(f"{k}={v}" for k, v in t.items() if k != "name") + ")"
             for t in ts]
    return f"{d['name']}: {' + '.join(parts)}"


def collect(store: Store, run: str) -> dict[str, Any]:
    """Everything about a run, as JSON-able data (the content of results.json)."""
    rec = store.run(run)
    cells, missing = [], []
    for key, spec in rec["cells"]:
        s = summarize_cell(store, key, spec)
        if s is None:
            missing.append({"key": key, "model": spec["model"]["name"],
                            "defense": defense_label(spec["defense"]),
                            "attack": cell_label(spec, {}),
                            "eps": spec["params"].get("eps"),
                            "reason": rec["env"].get("skipped", {}).get(key, "not computed")})
        else:
            cells.append(s)
    return {"schema": SCHEMA,
            "run": {k: rec[k] for k in ("name", "config", "env", "started", "finished",
                                        "wall_s")},
            "cells": cells, "missing": missing,
            "verdicts": verdicts(store, cells, rec["env"].get("sanity"))}


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return _f(v)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_results(path: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write results.json atomically (NaN written as null)."""
    text = json.dumps(_clean(results), indent=1, allow_nan=False)
    return atomic_write(path, text + "\n")
