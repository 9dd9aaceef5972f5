"""report.html: one self-contained page (inline CSS, figures as base64 PNG) for a stored run.

Sections: verdicts (the headline robust accuracy per model, defense and eps, the worst case
over every attack, red where a sanity finding is still open), summary table, robust accuracy
vs eps, robustness curves from one minimum-norm run, adversarial-example gallery, defenses
(naive vs adaptive attack), black-box success vs queries, detector ROC curves (naive vs
adaptive attack), transferability heatmap, the four properties of adversarial examples,
sanity-check findings (with the result of the adaptive attack each one names), environment.
A section without data says why in one line instead of disappearing.

Everything is recomputed from the results database (:func:`advlab.evaluation.collect` and
the stored per-example rows), so ``advlab report RUN_DIR`` re-renders a run at any time.
"""
from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from advlab.errors import DataError
from advlab.evaluation import metrics
from advlab.evaluation.results import attack_norm, collect, reference_eps, write_results
from advlab.evaluation.store import Store, atomic_write
from advlab.evaluation.verdicts import finding_status
from advlab.report import plots

Cell = dict[str, Any]

# ----------------------------------------------------------------------------- formatting


def esc(v: Any) -> str:
    return html.escape(str(v))


def pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def fmt_eps(v: float | None) -> str:
    return "min-norm" if v is None else f"{v:g}"


def img(png: bytes, alt: str) -> str:
    return (f'<img alt="{esc(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}">')


def table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    th = "".join(f"<th>{h}</th>" for h in head)
    thead = f"<thead><tr>{th}</tr></thead>" if any(head) else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def note(text: str) -> str:
    return f'<p class="none">{text}</p>'


# ----------------------------------------------------------------------------- context


@dataclass
class Context:
    """What every section reads: the results, the store, and the reference eps."""

    store: Store
    results: dict[str, Any]
    ref_eps: float | None
    classes: list[str] | None

    @property
    def cells(self) -> list[Cell]:
        return self.results["cells"]

    @property
    def config(self) -> dict[str, Any]:
        return self.results["run"]["config"]


def group_label(c: Cell, with_defense: bool) -> str:
    return f"{c['label']} ({c['defense']})" if with_defense else c["label"]


def naive(cells: Sequence[Cell]) -> list[Cell]:
    """The cells of configured attacks (not the adaptive ones)."""
    return [c for c in cells if not c["adaptive"]]


def reference_cells(ctx: Context) -> list[Cell]:
    """One naive cell per (model, defense, attack label): the one at the reference eps, else
    the one nearest the middle of that attack's grid (minimum-norm attacks have one cell)."""
    groups: dict[tuple[str, str, str], list[Cell]] = {}
    for c in naive(ctx.cells):
        groups.setdefault((c["model"], c["defense"], c["label"]), []).append(c)
    out = []
    for cs in groups.values():
        exact = [c for c in cs if c["eps"] is not None and ctx.ref_eps is not None
                 and attack_norm(c) == "linf" and math.isclose(c["eps"], ctx.ref_eps)]
        if exact:
            out.append(exact[0])
        else:
            out.append(sorted(cs, key=lambda c: c["eps"] or 0.0)[len(cs) // 2])
    return out


def _defended(ctx: Context) -> bool:
    return len({c["defense"] for c in ctx.cells}) > 1


# ----------------------------------------------------------------------------- sections


def section_summary(ctx: Context) -> str:
    """The table of every cell: accuracy, success, norms, time."""
    rows = []
    for c in ctx.cells:
        n = c["median_norms"]
        rows.append([esc(c["model"]), esc(c["defense"]), esc(c["label"]),
                     esc(fmt_eps(c["eps"])), str(c["n"]), pct(c["clean_accuracy"]),
                     f"<b>{pct(c['robust_accuracy'])}</b>", pct(c["success_rate"]),
                     num(n["linf"]), num(n["l2"]), num(c["mean_ssim"]),
                     pct(c["wrong_confidence"]), f"{c['wall_s']:.1f} s"])
    out = table(["model", "defense", "attack", "eps", "n", "clean acc", "robust acc", "success",
                 "median L∞", "median L2", "SSIM", "conf. wrong", "time"], rows, "num")
    missing = ctx.results["missing"]
    if missing:
        items = "".join(f"<li>{esc(m['model'])} / {esc(m['defense'])} / {esc(m['attack'])} "
                        f"eps={esc(fmt_eps(m['eps']))}: {esc(m['reason'])}</li>"
                        for m in missing)
        out += f"<p><b>{len(missing)} cell(s) without results:</b></p><ul>{items}</ul>"
    intro = ("<p>n: test images of the cell (the first n of the evaluation images; [n=...] "
             "marks an attack run on a subset). Adaptive cells attack a defense through its "
             "BPDA/EOT surrogate, a detector together with the model, or settle a sanity finding. "
             "Robust accuracy: the model is right after the attack. Success: fooled among the "
             "images the model gets right. Norms and SSIM over the successful adversarial "
             "examples; conf. wrong: mean confidence of the wrong predictions on adversarial "
             "examples.</p>")
    return intro + out


def section_robustness(ctx: Context) -> str:
    """Robust accuracy vs eps, one panel per model and norm (eps 0 = clean accuracy)."""
    with_def = _defended(ctx)
    panels: dict[tuple[str, str], list[plots.Curve]] = {}
    full = [c for c in naive(ctx.cells) if c["subset"] is None]
    for (model, norm), cells in _by(full, lambda c: (c["model"], attack_norm(c))).items():
        curves = []
        bounded = [c for c in cells if c["eps"] is not None]
        top = max((c["eps"] for c in bounded), default=1.0) or 1.0
        for label, cs in _by(bounded, lambda c: group_label(c, with_def)).items():
            cs = sorted(cs, key=lambda c: c["eps"])
            xs = [0.0] + [c["eps"] for c in cs]
            ys = [cs[0]["clean_accuracy"]] + [c["robust_accuracy"] for c in cs]
            curves.append(plots.Curve(label, xs, ys))
        for c in cells:
            if c["eps"] is None:  # minimum-norm attack: accuracy at each radius
                ex = ctx.store.examples(c["key"])
                grid = np.linspace(0, top, 50)
                acc = metrics.accuracy_vs_norm(ex[norm] if norm in ex else ex["l2"],
                                               ex["success"], ex["clean_pred"], ex["label"],
                                               grid)
                curves.append(plots.Curve(group_label(c, with_def) + " (min-norm)",
                                          list(grid), list(acc), "-"))
        panels[(model, norm)] = curves
    if not panels:
        return note("No cells stored yet.")
    png = plots.lines([(f"{m} ({n})", cs) for (m, n), cs in panels.items()],
                      "eps (pixel scale)", "robust accuracy")
    return img(png, "robust accuracy vs eps")


def section_curves(ctx: Context) -> str:
    """Robustness curves (``[[curves]]``): robust accuracy vs eps from one minimum-norm run
    per model and defense, the grid radii its bounded attack confirmed marked, and the
    configured bounded attacks on the same images drawn beside it."""
    curves = [c for c in ctx.cells if c.get("curve")]
    if not curves:
        return note("No robustness curves: add a [[curves]] table (a minimum-norm attack and "
                    "the grid a bounded attack confirms).")
    panels, rows = [], []
    for c in curves:
        k = c["curve"]
        lines = [plots.Curve(c["label"], k["eps"], k["dense"], "-"),
                 plots.Curve(f"grid, confirmed by {k['bounded']}" if k["bounded"] else
                             "grid (not confirmed)", k["grid"], k["accuracy"], "o")]
        same = [b for b in naive(ctx.cells) if not b.get("curve") and b["eps"] is not None
                and (b["model"], b["defense"], b["subset"]) == (c["model"], c["defense"],
                                                                c["subset"])
                and attack_norm(b) == k["norm"]]
        for label, bs in _by(same, lambda b: b["label"]).items():
            bs = sorted(bs, key=lambda b: b["eps"])
            lines.append(plots.Curve(f"{label} (bounded)", [b["eps"] for b in bs],
                                     [b["robust_accuracy"] for b in bs], "x:"))
        panels.append((f"{c['model']} / {c['defense']} ({k['norm']})", lines))
        rows.append([esc(c["model"]), esc(c["defense"]), esc(c["label"]), str(c["n"]),
                     ", ".join(f"{e:g}: {pct(a)}" for e, a in zip(k["grid"], k["accuracy"],
                                                                 strict=True)),
                     pct(k["robust"]), f"{c['wall_s']:.1f} s"])
    intro = ("<p>One minimum-norm run gives each image its smallest adversarial radius, so "
             "the whole curve comes from one run; at the grid's radii (dots) a bounded attack "
             "attacks every image. The curve is the per-image "
             "minimum of both: never above either. Crosses: the configured bounded attacks "
             "on the same images.</p>")
    png = plots.lines(panels, "eps (pixel scale)", "robust accuracy")
    return intro + img(png, "robustness curves") + table(
        ["model", "defense", "curve", "n", "robust accuracy at the grid", "never fooled",
         "time"], rows, "num")


def _gallery_items(ctx: Context, c: Cell, k: int) -> list[plots.GalleryItem]:
    ex = ctx.store.examples(c["key"])
    pos = {int(i): j for j, i in enumerate(ex["idx"])}
    items = []
    for idx, x, xa in ctx.store.gallery(c["key"])[:k]:
        j = pos[idx]
        items.append(plots.GalleryItem(x, xa, int(ex["label"][j]), int(ex["clean_pred"][j]),
                                       float(ex["clean_conf"][j]), int(ex["adv_pred"][j]),
                                       float(ex["adv_conf"][j])))
    return items


def gallery_cells(ctx: Context) -> list[Cell]:
    """One reference cell per (model, defense, attack), the whole data's before a subset's,
    then the adaptive attacks on the defenses."""
    ref = sorted(reference_cells(ctx), key=lambda c: c["subset"] is not None)
    firsts = {}
    for c in ref:
        firsts.setdefault((c["model"], c["defense"], c["attack"]), c)
    adaptive = [c for c in ctx.cells if c["adaptive"] and c["adaptive"]["against"] == "defense"]
    return list(firsts.values()) + adaptive


def section_gallery(ctx: Context) -> str:
    """Original | amplified perturbation | adversarial, per model, one row per attack."""
    k = int(ctx.config.get("report", {}).get("gallery_columns", 2))
    out = []
    for (model, defense), cells in _by(gallery_cells(ctx),
                                       lambda c: (c["model"], c["defense"])).items():
        rows = [(("adaptive\n" + c["adaptive"]["attack"] if c["adaptive"] else c["attack"])
                 + f"\neps={fmt_eps(c['eps'])}", _gallery_items(ctx, c, k)) for c in cells]
        rows = [r for r in rows if r[1]]
        if not rows:
            continue
        title = model if defense == "none" else f"{model} + {defense}"
        out.append(f"<h3>{esc(title)}</h3>" + img(plots.gallery(rows, ctx.classes),
                                                  f"gallery {title}"))
    if not out:
        return note("No stored image pairs (report.gallery = 0, or nothing was fooled).")
    return ("<p>Predicted class and confidence above each image (green: right, red: "
            "wrong); the perturbation is amplified to the full gray range, its factor "
            "shown.</p>" + "".join(out))


def section_blackbox(ctx: Context) -> str:
    """Success rate vs query budget for attacks that report queries."""
    cells = [c for c in ctx.cells if c["median_queries"] is not None
             or (ctx.store.examples(c["key"])["queries"] >= 0).any()]
    if not cells:
        return note("No black-box (score- or label-based) attack in this run: add one to "
                    "[[attacks]] (see <code>advlab list</code>, knowledge = score/label).")
    panels = []
    rows = []
    for model, cs in _by(cells, lambda c: c["model"]).items():
        curves = []
        for c in cs:
            ex = ctx.store.examples(c["key"])
            ok = ex["clean_pred"] == ex["label"]
            q = ex["queries"][ok]
            budgets = np.unique(np.geomspace(1, max(int(q.max(initial=1)), 2), 40).astype(int))
            rate = metrics.success_vs_queries(q, ex["success"][ok], budgets)
            eps = "" if c["eps"] is None else f" eps={fmt_eps(c['eps'])}"
            curves.append(plots.Curve(c["label"] + eps, list(budgets), list(rate), "-"))
            rows.append([esc(model), esc(c["label"]), esc(fmt_eps(c["eps"])), str(c["n"]),
                         esc(c["params"].get("max_queries", "–")), pct(c["success_rate"]),
                         num(c["median_queries"], 4)])
        panels.append((model, curves))
    png = plots.lines(panels, "queries per example", "success rate", logx=True)
    return (img(png, "success vs queries") + "<p>Fraction of the correctly classified images "
            "fooled within each query budget (every query counted, success checks included)."
            "</p>" + table(["model", "attack", "eps", "n", "query budget", "success",
                            "median queries (fooled)"], rows, "num"))


def detection_rows(ctx: Context) -> list[tuple[str, str, Cell, dict[str, Any]]]:
    """(model, detector, cell, its numbers) for every cell a detector scored: the naive
    attacks, then the adaptive attacks against that detector."""
    out = []
    for c in ctx.cells:
        for det, d in c["detectors"].items():
            out.append((c["model"], det, c, d))
    adaptive = lambda r: r[2]["adaptive"] is not None  # noqa: E731
    return sorted(out, key=lambda r: (r[0], r[1], adaptive(r)))


def section_detectors(ctx: Context) -> str:
    """Per detector: ROC curves and AUC, TPR at 5% FPR and the rate of inputs both
    misclassified and undetected, under the naive attacks and under the adaptive attack
    that also descends the detector's score."""
    rows = detection_rows(ctx)
    if not rows:
        configured = ctx.config.get("detectors") or []
        if configured:
            return note("Detectors were configured but produced no scores "
                        "(advlab.detectors unavailable, or no successful attack).")
        return note("No detectors in this run: add [[detectors]] to the configuration.")
    panels, table_rows = [], []
    for (model, det), rs in _by(rows, lambda r: (r[0], r[1])).items():
        curves = []
        for _, _, c, d in rs:
            ex = ctx.store.examples(c["key"])
            fooled = ex["success"] & (ex["clean_pred"] == ex["label"])
            s = ctx.store.scores(c["key"])[det]
            fpr, tpr, _ = metrics.roc_curve(s["clean"], s["adv"][fooled])
            style = "--" if c["adaptive"] else "-"
            name = "adaptive" if c["adaptive"] else f"{c['attack']} eps={fmt_eps(c['eps'])}"
            curves.append(plots.Curve(f"{name} (AUC {d['auc']:.3f})", list(fpr), list(tpr),
                                      style))
            kind = "<b>adaptive</b>" if c["adaptive"] else "naive"
            table_rows.append([esc(model), esc(det), kind, esc(c["label"]),
                               esc(fmt_eps(c["eps"])), str(c["n"]), pct(c["success_rate"]),
                               num(d["auc"]), pct(d["tpr_at_fpr"]),
                               f"<b>{pct(d.get('undetected'))}</b>"])
        panels.append((f"{det} on {model}", curves))
    png = plots.lines(panels, "false-positive rate (clean flagged)",
                      "true-positive rate (AEs detected)", diagonal=True, columns=2)
    return (img(png, "detector ROC") + "<p>Positives: successful adversarial examples; "
            "negatives: the clean images of the same cell. Naive: the attack ignores the "
            "detector; adaptive (dashed): PGD on the classification margin until the image is "
            "misclassified, then away from the detector's differentiable score, judged on the "
            "real detector at every step (Carlini &amp; Wagner 2017, arXiv:1705.07263). "
            "TPR at the threshold that flags 5% of the clean images; <b>fooled and "
            "undetected</b>: attacked images misclassified and not flagged there (what gets "
            "through model and detector together).</p>" + table(
                ["model", "detector", "attack", "", "eps", "n", "success", "AUC",
                 "TPR at 5% FPR", "fooled and undetected"], table_rows, "num"))


def defense_rows(ctx: Context) -> list[dict[str, Any]]:
    """Per defended naive bounded cell: clean accuracy, robust accuracy under the naive
    attack, under the adaptive attack at the same eps on the same images, the gap, and the
    undefended model's robust accuracy under the same naive attack."""
    adaptive = {(c["model"], c["defense"], c["eps"], c["subset"], attack_norm(c)): c
                for c in ctx.cells if c["adaptive"] and c["adaptive"]["against"] == "defense"}
    plain = {(c["model"], c["label"], c["eps"]): c for c in naive(ctx.cells)
             if c["defense"] == "none"}
    out = []
    for c in naive(ctx.cells):
        if c["defense"] == "none" or c["eps"] is None:
            continue
        a = adaptive.get((c["model"], c["defense"], c["eps"], c["subset"], attack_norm(c)))
        base = plain.get((c["model"], c["label"], c["eps"]))
        gap = None if a is None or c["robust_accuracy"] is None or \
            a["robust_accuracy"] is None else c["robust_accuracy"] - a["robust_accuracy"]
        out.append({"cell": c, "adaptive": a, "gap": gap,
                    "undefended": None if base is None else base["robust_accuracy"]})
    return out


def section_defenses(ctx: Context) -> str:
    """Every defense against the naive attacks and against its adaptive attack."""
    rows = defense_rows(ctx)
    if not rows:
        return note("No defended cells in this run: add a [[defenses]] entry (e.g. name = "
                    '"transformed" with a BitDepth or JPEG transformation) and let attacks '
                    "run behind it.")
    out = []
    for r in rows:
        c, a = r["cell"], r["adaptive"]
        out.append([esc(c["model"]), esc(c["defense"]), esc(c["label"]),
                    esc(fmt_eps(c["eps"])), str(c["n"]), pct(c["clean_accuracy"]),
                    pct(r["undefended"]), pct(c["robust_accuracy"]),
                    "–" if a is None else f"<b>{pct(a['robust_accuracy'])}</b>",
                    "–" if a is None else esc(a["label"]),
                    "–" if r["gap"] is None else f"<b>{100 * r['gap']:+.1f} pts</b>"])
    return ("<p>Clean and robust accuracy of each defended model. Naive: the attack "
            "differentiates the defended model as it is (non-differentiable or random parts "
            "give useless gradients); adaptive: the defense's own attack (BPDA through "
            "non-differentiable parts, EOT over its randomness; Athalye, Carlini &amp; Wagner "
            "2018, arXiv:1802.00420), its examples judged on the real defended model. Gap: "
            "naive minus adaptive robust accuracy, the robustness the naive evaluation "
            "overstates.</p>" + table(
                ["model", "defense", "naive attack", "eps", "n", "clean acc",
                 "undefended robust acc", "robust acc (naive)", "robust acc (adaptive)",
                 "adaptive attack", "gap"], out, "num"))


def transfer_matrices(ctx: Context) -> list[tuple[str, list[str], list[str], np.ndarray]]:
    """Per attack at the reference eps: source model x target model -> fooling rate
    (diagonal: the white-box success rate; off-diagonal: the transfer rate)."""
    out = []
    undefended = [c for c in reference_cells(ctx) if c["defense"] == "none"]
    models = list(dict.fromkeys(c["model"] for c in ctx.cells))
    for attack, cs in _by(undefended, lambda c: c["label"]).items():
        if len({c["model"] for c in cs}) < 2:
            continue
        m = np.full((len(models), len(models)), np.nan)
        for c in cs:
            i = models.index(c["model"])
            m[i, i] = np.nan if c["success_rate"] is None else c["success_rate"]
            for target, rate in c["transfer"].items():
                if target in models and rate is not None:
                    m[i, models.index(target)] = rate
        out.append((f"{attack} eps={fmt_eps(cs[0]['eps'])}", models, models, m))
    return out


def section_transfer(ctx: Context) -> str:
    models = {c["model"] for c in ctx.cells}
    if len(models) < 2:
        return note("Transferability needs at least two models in [[models]].")
    mats = transfer_matrices(ctx)
    if not mats:
        return note("No undefended cells to transfer from.")
    return ("<p>Adversarial examples crafted on the source model (row) shown to the target "
            "model (column): fraction fooled among the images the source was fooled on and "
            "the target classifies correctly. Diagonal: the white-box success rate.</p>"
            + img(plots.heatmaps(mats, "target model", "source model"), "transferability"))


def section_properties(ctx: Context) -> str:
    """The lecture's four properties, measured on the reference cells."""
    rows = []
    probes: list[str] = []
    for c in reference_cells(ctx):
        for p in c["fragility"]:
            if p not in probes:
                probes.append(p)
    for c in reference_cells(ctx):
        tr = [v for v in c["transfer"].values() if v is not None]
        frag = [f"{pct(c['fragility'][p]['adversarial_reverted'])} "
                f"<small>({pct(c['fragility'][p]['clean_kept'])})</small>"
                if p in c["fragility"] else "–" for p in probes]
        rows.append([esc(c["model"]), esc(c["defense"]), esc(c["label"]),
                     esc(fmt_eps(c["eps"])), f"{pct(c['wrong_confidence'])} <small>("
                     f"{pct(c['clean_confidence'])})</small>",
                     pct(float(np.mean(tr))) if tr else "–",
                     num(c["median_norms"]["linf"]), num(c["median_norms"]["l2"]),
                     num(c["mean_ssim"]), *frag])
    if not rows:
        return note("No cells stored yet.")
    head = ["model", "defense", "attack", "eps", "1. confidence of wrong predictions "
            "<small>(clean correct)</small>", "2. transfer (mean over other models)",
            "3. median L∞", "3. median L2", "3. SSIM",
            *[f"4. reverted by {esc(p)} <small>(clean kept)</small>" for p in probes]]
    return ("<ol><li><b>High-confidence wrong predictions</b>: mean softmax confidence of "
            "the wrong adversarial predictions, against the mean confidence on the correct "
            "clean ones.</li><li><b>Transferability</b>: fooling rate on the other models "
            "(heatmap above).</li><li><b>Visual similarity</b>: perturbation norms and "
            "structural similarity (SSIM, 1 = identical).</li><li><b>Fragility</b>: "
            "fraction of successful adversarial examples that a small transformation "
            "(shift:k = k pixels to the right, noise:s = Gaussian noise of std s) turns back "
            "into the true class; in brackets, the fraction of correct clean images that stay "
            "correct under the same transformation.</li></ol>" + table(head, rows, "num"))


def section_sanity(ctx: Context) -> str:
    """Findings of advlab.evaluation.sanity per attacked model, warnings first."""
    groups = ctx.results["run"]["env"].get("sanity")
    if groups is None:
        return note("Sanity checks did not run: advlab.evaluation.sanity is not available "
                    "in this installation, or [sanity] enabled = false.")
    if not groups:
        return note("No sanity checks: no L∞ cell at the reference eps.")
    rows = []
    order = {"warning": 0, "ok": 1, "skipped": 2}
    for g in groups:
        for f in sorted(g["findings"], key=lambda f: order.get(f.get("level"), 3)):
            level = f.get("level", "")
            fix = ""
            if f.get("attack"):
                kw = ", ".join(f"{k}={v}" for k, v in (f.get("attack_kwargs") or {}).items()
                               if k != "findings")  # the ladder's: the fired findings
                fix = f"{f['attack']}({kw})" + (" on the BPDA/EOT surrogate"
                                                if f.get("on_surrogate") else "")
            cls = ' class="warn"' if level == "warning" else ""
            rows.append([esc(g["model"]), esc(g["defense"]), esc(fmt_eps(g["eps"])),
                         esc(f.get("check", f.get("name", ""))), f"<b{cls}>{esc(level)}</b>",
                         esc(f.get("message", "")), esc(fix), _settled(ctx, g, f)])
    warnings = sum(f.get("level") == "warning" for g in groups for f in g["findings"])
    head = (f"<p><b>{warnings} warning(s)</b>: each names the adaptive attack that settles "
            "the question.</p>" if warnings else
            "<p>No symptom of gradient masking or of a broken evaluation.</p>")
    return head + table(["model", "defense", "eps", "check", "level", "finding",
                         "adaptive attack", "its result"], rows)


def _settled(ctx: Context, group: dict[str, Any], finding: dict[str, Any]) -> str:
    """The result of the adaptive attack a fired finding names (its cell), next to the best
    naive attack at the same eps on the same model and defense."""
    key = finding.get("cell")
    if not key:
        return ""
    c = next((c for c in ctx.cells if c["key"] == key), None)
    if c is None:
        return "not computed"
    best = [x["robust_accuracy"] for x in naive(ctx.cells)
            if x["model"] == group["model"] and x["defense"] == group["defense"]
            and x["eps"] is not None and math.isclose(x["eps"], group["eps"])
            and x["robust_accuracy"] is not None]
    naive_best = f"; best naive attack: {pct(min(best))}" if best else ""
    status = ""
    if c.get("ladder"):  # the ladder re-checked the finding after climbing
        st = finding_status(finding, {c["key"]: c})
        rungs = sorted({n["winner"] for n in c["ladder"] if n.get("winner")})
        status = (f'<br><span class="{"warn" if st == "open" else ""}">{esc(st)}</span>'
                  f" <small>(rung: {esc(', '.join(rungs) or 'none found more')})</small>")
    return (f"robust acc <b>{pct(c['robust_accuracy'])}</b> "
            f"<small>(n={c['n']}{naive_best})</small>{status}")


VERDICT_TEXT = {
    "ok": "ok: the sanity checks are silent",
    "settled": "settled: every fired check is settled by an adaptive attack",
    "unreliable": "UNRELIABLE: a fired check is still open; the figure is an upper bound at "
                  "best",
    "unchecked": "unchecked: no sanity check ran at this eps",
}


def section_verdicts(ctx: Context) -> str:
    """The headline figure per model, defense and eps: the worst case over every attack,
    with the verdict of the sanity checks; an unreliable figure in red."""
    vs = ctx.results.get("verdicts") or []
    if not vs:
        return note("No L∞ cell with an eps: nothing to give a verdict on.")
    rows = []
    for v in vs:
        red = v["verdict"] == "unreliable"
        acc = pct(v["robust_accuracy"])
        fig = f'<b class="warn">{acc} (unreliable)</b>' if red else f"<b>{acc}</b>"
        found = "<br>".join(
            (f'<span class="warn">{esc(k)}: {esc(s)}</span>' if s == "open"
             else f"{esc(k)}: {esc(s)}") for k, s in v["findings"].items())
        rows.append([esc(v["model"]), esc(v["defense"]), esc(fmt_eps(v["eps"])), fig,
                     str(v["n"]), pct(v["naive_robust_accuracy"]), str(v["attacks"]),
                     f'<span class="{"warn" if red else ""}">'
                     f'{esc(VERDICT_TEXT[v["verdict"]])}</span>', found or "–",
                     esc(", ".join(v["ladder"] or [])) or "–"])
    intro = ("<p>Robust accuracy: the worst case per image over every attack run at this eps "
             "on this model and defense (naive, adaptive, the attacks the sanity findings "
             "name, the adaptive-attack ladder), on the n images all of them attacked. A "
             "naive figure alone is never the headline once a check fired. Ladder: the rung "
             "that brought the figure down (logits, bpda, transfer, square, label).</p>")
    return intro + table(["model", "defense", "eps", "robust acc", "n", "best naive",
                          "attacks", "verdict", "findings", "ladder"], rows)


def section_environment(ctx: Context) -> str:
    run = ctx.results["run"]
    env = dict(run["env"])
    env.pop("sanity", None)
    env.pop("classes", None)
    skipped = env.pop("skipped", {})
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["started"]))
    compute = sum(c["wall_s"] for c in ctx.cells)
    rows = [["run", esc(run["name"])], ["started (last invocation)", esc(when)],
            ["wall time (last invocation)",
             f"{run['wall_s']:.1f} s" if run["wall_s"] else "unfinished"],
            ["time spent in the cells (all invocations)", f"{compute:.1f} s"]]
    rows += [[esc(k), esc(v)] for k, v in env.items() if k != "wall_s"]
    if skipped:
        rows.append(["skipped cells", str(len(skipped))])
    cfg = esc(json.dumps(run["config"], indent=1))
    return (table(["", ""], rows, "env")
            + f"<details><summary>configuration</summary><pre>{cfg}</pre></details>")


SECTIONS: list[tuple[str, str, Callable[[Context], str]]] = [
    ("verdicts", "Verdicts", section_verdicts),
    ("summary", "Summary", section_summary),
    ("robustness", "Robust accuracy vs eps", section_robustness),
    ("curves", "Robustness curves from one minimum-norm run", section_curves),
    ("gallery", "Adversarial examples", section_gallery),
    ("defenses", "Defenses: naive vs adaptive attacks", section_defenses),
    ("blackbox", "Black-box: success vs queries", section_blackbox),
    ("detectors", "Detectors: ROC curves, naive vs adaptive attacks", section_detectors),
    ("transfer", "Transferability", section_transfer),
    ("properties", "The four properties of adversarial examples", section_properties),
    ("sanity", "Sanity checks", section_sanity),
    ("environment", "Environment", section_environment),
]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px}th{background:#f3f3f3;text-align:left}
table.num td{text-align:right}table.num td:nth-child(-n+3){text-align:left}
table.num td:first-child{white-space:nowrap}
table.num td:nth-child(2),table.num td:nth-child(3){max-width:16em;overflow-wrap:break-word}
tbody tr:nth-child(even){background:#fafafa}
img{max-width:100%;display:block;margin:.5em 0}.none{color:#777;font-style:italic}
nav a{margin-right:1em}.warn{color:#b00}small{color:#777}
pre{background:#f6f6f6;padding:.6em;font-size:12px;overflow:auto}
"""


def render(store: Store, run: str, results: dict[str, Any] | None = None) -> str:
    """The report of a stored run as one self-contained HTML page."""
    res = results if results is not None else collect(store, run)
    report_cfg = res["run"]["config"].get("report", {})
    ctx = Context(store, res, reference_eps(res["cells"], report_cfg.get("eps")),
                  res["run"]["env"].get("classes"))
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in SECTIONS)
    body = "".join(f'<section id="{sid}"><h2>{esc(title)}</h2>{fn(ctx)}</section>'
                   for sid, title, fn in SECTIONS)
    ref = ("" if ctx.ref_eps is None else
           f" Gallery, transfer, properties and ROC at L∞ eps = {ctx.ref_eps:g}.")
    data = res["run"]["config"].get("data", {})
    sub = (f"{len(ctx.cells)} cells on {esc(data.get('name', '?'))} "
           f"({esc(data.get('split', '?'))}).{ref}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>advlab report: {esc(run)}</title><style>{CSS}</style></head><body>"
            f"<h1>advlab report: {esc(run)}</h1><p>{sub}</p><nav>{nav}</nav>{body}"
            "</body></html>")


def write_report(run_dir: str | Path, db: str | Path | None = None) -> tuple[Path, Path]:
    """Re-render ``run_dir``/report.html and results.json from the results database.

    Args:
        run_dir: ``<root>/<run name>``; the run's name is the directory's name.
        db: the database (default ``<root>/advlab.sqlite``, next to the run directory).

    Returns:
        (path of report.html, path of results.json), both written atomically.
    """
    run_dir = Path(run_dir)
    db = Path(db) if db is not None else run_dir.parent / "advlab.sqlite"
    if not db.is_file():
        raise DataError(f"no results database at {db}; run `advlab run` first or pass --db")
    with Store(db, create=False) as store:
        res = collect(store, run_dir.name)
        page = render(store, run_dir.name, res)
    return (atomic_write(run_dir / "report.html", page),
            write_results(run_dir / "results.json", res))


def _by(items: Sequence[Cell], key: Callable[[Cell], Any]) -> dict[Any, list[Cell]]:
    out: dict[Any, list[Cell]] = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out
