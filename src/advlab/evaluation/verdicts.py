"""The verdict per (model, defense, eps): one robust-accuracy figure, and whether to trust it.

The headline robust accuracy is the worst case per example over *every* attack run at that
eps on that model and defense (naive cells, the defense's adaptive attack, the attacks the
sanity findings name, the ladder), on the images all of them attacked. It is never a naive
figure alone once a sanity check fired. The verdict:

- ``ok``: the sanity checks ran at this eps and none fired;
- ``settled``: checks fired, and every fired finding is settled (by the ladder's re-checks,
  :mod:`advlab.evaluation.ladder`, or by the defense's own adaptive attack);
- ``unreliable``: a fired finding is still open (the ladder did not settle it, or its attack
  did not run): the figure is an upper bound at best, and the report shows it in red;
- ``unchecked``: no sanity check ran at this eps (they run at the reference eps).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from advlab.evaluation.store import Store

VERDICTS = ("ok", "settled", "unreliable", "unchecked")


def _linf(c: dict[str, Any]) -> bool:
    return c["params"].get("norm", "linf") == "linf" and c["eps"] is not None


def finding_status(f: dict[str, Any], cells: dict[str, dict[str, Any]]) -> str:
    """A fired finding's status: "settled", "open", or "settled by its adaptive attack"
    (a defense's own attack, not re-checked)."""
    c = cells.get(f.get("cell") or "")
    if c is None:
        return "open"
    notes = c.get("ladder")
    if notes:
        states = [n["findings"].get(f.get("check", f.get("name")), "open") for n in notes]
        return "settled" if all(s == "settled" for s in states) else "open"
    return "settled by its adaptive attack"


def _worst_case(store: Store, cells: Sequence[dict[str, Any]]) -> tuple[float | None, int]:
    """Robust accuracy of the per-example worst case over ``cells`` on the images every one
    of them attacked (clean-correct and never fooled), and that number of images."""
    robust: dict[int, bool] | None = None
    for c in cells:
        ex = store.examples(c["key"])
        ok = (ex["adv_pred"] == ex["label"]) & (ex["clean_pred"] == ex["label"])
        col = {int(i): bool(o) for i, o in zip(ex["idx"], ok, strict=True)}
        robust = col if robust is None else \
            {i: r and col[i] for i, r in robust.items() if i in col}
    if not robust:
        return None, 0
    return sum(robust.values()) / len(robust), len(robust)


def verdicts(store: Store, cells: Sequence[dict[str, Any]],
             sanity: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One verdict per (model, defense, Linf eps) with cells (see the module docstring).

    Args:
        store: the results database (per-example rows).
        cells: the run's summarised cells (:func:`advlab.evaluation.results.collect`).
        sanity: the run's sanity groups (``env["sanity"]``: model, defense, eps, findings),
            or None when the checks did not run.

    Returns:
        Dicts: model, defense, eps, verdict, robust_accuracy (the headline), n (images it is
        measured on), naive_robust_accuracy (the best naive cell alone), attacks (how many
        cells), findings (fired check -> status), ladder (the winning rungs, if it ran).
    """
    by_key = {c["key"]: c for c in cells}
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for c in cells:
        if _linf(c):
            groups.setdefault((c["model"], c["defense"], float(c["eps"])), []).append(c)
    out = []
    for (model, defense, eps), cs in groups.items():
        checks = [g for g in sanity or [] if g["model"] == model and g["defense"] == defense
                  and g["eps"] is not None and math.isclose(g["eps"], eps)]
        fired = [f for g in checks for f in g["findings"] if f.get("level") == "warning"]
        status = {f.get("check", f.get("name")): finding_status(f, by_key) for f in fired}
        if not checks:
            verdict = "unchecked"
        elif not fired:
            verdict = "ok"
        else:
            verdict = "settled" if all(s != "open" for s in status.values()) else "unreliable"
        acc, n = _worst_case(store, cs)
        naive = [c["robust_accuracy"] for c in cs
                 if not c["adaptive"] and c["robust_accuracy"] is not None]
        rungs = sorted({n_["winner"] for c in cs for n_ in (c.get("ladder") or [])
                        if n_.get("winner")})
        out.append({"model": model, "defense": defense, "eps": eps, "verdict": verdict,
                    "robust_accuracy": acc, "n": n,
                    "naive_robust_accuracy": min(naive) if naive else None,
                    "attacks": len(cs), "findings": status,
                    "ladder": rungs if any(c.get("ladder") for c in cs) else None})
    return out
