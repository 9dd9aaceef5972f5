"""The ``advlab`` command: run experiments, render reports, try one attack, list attacks.

    advlab run [CONFIG.toml]     the experiment matrix (no file: the built-in tour)
    advlab report RUN_DIR        re-render report.html and results.json from the database
    advlab attack NAME ...       one attack on one model: a table and a gallery PNG
    advlab list                  the attacks and their taxonomy

The library logs; this module prints. Errors that advlab raises on purpose (unknown names,
bad configurations, missing files) end with a one-line message and exit code 2, never a
traceback.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from advlab.errors import AdvlabError


class Failure(click.ClickException):
    """An advlab error shown as ``Error: message`` with exit code 2."""

    exit_code = 2


class Group(click.Group):
    """Turns :class:`AdvlabError` raised by any command into :class:`Failure`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdvlabError as exc:
            raise Failure(str(exc)) from None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(  # noqa: E731
        str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads (default: torch's choice, one per core).")
def cli(verbose: int, threads: int | None) -> None:
    """advlab: adversarial examples, attacks, defenses and honest evaluation."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("advlab").setLevel(level)


# ----------------------------------------------------------------------------- run


class Bars:
    """tqdm bars for the runner's progress events: cells, and batches within a cell."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.cells: Any = None
        self.batches: Any = None

    def __call__(self, p: Any) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if p.event == "plan":  # the matrix, then the cells that sanity findings add
            self.close()
            self.cells = tqdm(total=p.cells, desc="cells", unit="cell", dynamic_ncols=True)
        elif p.event in ("skip", "done"):
            self._close_batches()
            self.cells.set_postfix_str(("stored: " if p.event == "skip" else "") + p.label)
            self.cells.update(1)
        elif p.event == "cell":
            self.cells.set_postfix_str(p.label)
        elif p.event == "batch":
            if self.batches is None:
                self.batches = tqdm(total=p.batches, desc="  batches", leave=False,
                                    dynamic_ncols=True)
            self.batches.update(1)

    def _close_batches(self) -> None:
        if self.batches is not None:
            self.batches.close()
            self.batches = None

    def close(self) -> None:
        self._close_batches()
        if self.cells is not None:
            self.cells.close()
            self.cells = None


def _robust_grid(results: dict[str, Any]) -> str:
    """Robust accuracy, one row per model / defense / attack (label), one column per eps."""
    cells = results["cells"]
    eps = sorted({c["eps"] for c in cells if c["eps"] is not None})
    groups: dict[tuple[str, str, str], dict[Any, dict]] = {}
    for c in cells:
        groups.setdefault((c["model"], c["defense"], c["label"]), {})[c["eps"]] = c
    rows = []
    for (m, d, a), by_eps in groups.items():
        clean = next(iter(by_eps.values()))["clean_accuracy"]
        row = [m, d, a, _pct(clean)]
        row += [_pct(by_eps[e]["robust_accuracy"]) if e in by_eps else "" for e in eps]
        if None in by_eps:
            row.append(_pct(by_eps[None]["robust_accuracy"]))
        rows.append(row)
    head = ["model", "defense", "attack", "clean"] + [f"eps={e:g}" for e in eps]
    if any(None in g for g in groups.values()):
        head.append("min-norm")
        rows = [r + [""] * (len(head) - len(r)) for r in rows]
    return _table(head, rows)


def _detection(results: dict[str, Any]) -> str:
    """One row per detector and scored cell: AUC, TPR at 5% FPR, fooled and undetected."""
    rows = [[c["model"], det, c["label"], _num(d["auc"]), _pct(d["tpr_at_fpr"]),
             _pct(d.get("undetected"))]
            for c in results["cells"] for det, d in c["detectors"].items()]
    if not rows:
        return ""
    return _table(["model", "detector", "attack", "AUC", "TPR", "undetected"], rows)


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--root", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder of the results database and of the run folders.")
@click.option("--device", default=None, help="cpu or cuda (default: the config's, else cpu).")
@click.option("--name", default=None, help="Run name (default: the config's).")
@click.option("-n", "n", type=click.IntRange(min=1), default=None,
              help="Number of test images (overrides the config; attacks with a smaller n "
              "keep theirs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Batch size (overrides the config).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Processes computing cells on CPU (overrides the config; 0: one per "
              "core).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--show-config", is_flag=True, help="Print the built-in configuration and exit.")
def run(config: str | None, root: str, device: str | None, name: str | None, n: int | None,
        batch_size: int | None, workers: int | None, progress: bool, show_config: bool
        ) -> None:
    """Evaluate models x defenses x attacks and write runs/<name>/report.html.

    With no CONFIG, runs the built-in tour on the embedded MNIST subset: FGSM, BIM, PGD at
    several eps on the zoo's mnist-mlp and mnist-cnn; on mnist-cnn, seven detectors and a
    bit-depth defense under naive and adaptive attacks, and black-box attacks (Square,
    Bandits, SimBA) with their query counts; on mnist-mlp, defensive distillation
    (`advlab run --show-config`). Finished cells are stored in ROOT/advlab.sqlite and never
    recomputed: interrupt and rerun to resume.
    """
    from advlab import evaluation, report

    if show_config:
        click.echo(evaluation.DEFAULT_TOML, nl=False)
        return
    cfg = evaluation.load_config(config)
    cfg.name = name or cfg.name
    if n is not None:
        cfg.data = dataclasses.replace(cfg.data, n=n)
    cfg.batch_size = batch_size or cfg.batch_size
    cfg.workers = cfg.workers if workers is None else workers
    t0 = time.perf_counter()
    bars = Bars(progress)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            evaluation.run(cfg, root=root, device=device, progress=bars)
    except KeyboardInterrupt:
        bars.close()
        click.echo("\ninterrupted: finished cells are stored; rerun the same command to "
                   "resume.", err=True)
        sys.exit(130)
    bars.close()
    html, results_json = report.write_report(Path(root) / cfg.name)
    results = json.loads(results_json.read_text())
    click.echo("\nrobust accuracy\n" + _robust_grid(results))
    detection = _detection(results)
    if detection:
        click.echo("\ndetectors (AUC / TPR at 5% FPR / fooled and undetected)\n" + detection)
    if results.get("verdicts"):
        click.echo("\nverdicts (robust accuracy = worst case over every attack)\n"
                   + _verdicts(results["verdicts"]))
    if results["missing"]:
        click.echo(f"\n{len(results['missing'])} cell(s) without results (see the report).")
    click.echo(f"\nreport:  {html}\nresults: {results_json}\n"
               f"time:    {time.perf_counter() - t0:.1f} s")


def _verdicts(verdicts: list[dict[str, Any]]) -> str:
    """One line per (model, defense, eps): the headline figure and the verdict; the fired
    findings' status where checks fired."""
    lines = []
    for v in verdicts:
        acc = "–" if v["robust_accuracy"] is None else f"{100 * v['robust_accuracy']:.1f}%"
        naive = v["naive_robust_accuracy"]
        extra = ""
        if v["findings"]:
            extra = " (" + ", ".join(f"{k}: {s}" for k, s in v["findings"].items()) + ")"
            if naive is not None:
                extra += f"; naive {100 * naive:.1f}%"
        if v["ladder"]:
            extra += f"; ladder: {', '.join(v['ladder']) or 'no rung found more'}"
        flag = "UNRELIABLE" if v["verdict"] == "unreliable" else v["verdict"]
        lines.append(f"  {v['model']} / {v['defense']} eps={v['eps']:g}: {acc} "
                     f"[n={v['n']}] {flag}{extra}")
    return "\n".join(lines)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--db", default=None, type=click.Path(dir_okay=False),
              help="Results database (default: RUN_DIR/../advlab.sqlite).")
def report(run_dir: str, db: str | None) -> None:
    """Re-render RUN_DIR/report.html and results.json from the results database."""
    from advlab import report as rep

    html, results = rep.write_report(run_dir, db)
    click.echo(f"report:  {html}\nresults: {results}")


# ----------------------------------------------------------------------------- attack


def _param(text: str) -> tuple[str, Any]:
    """k=v with v read as JSON when it parses (numbers, true/false, lists), else a string."""
    k, sep, v = text.partition("=")
    if not sep or not k.strip() or not v.strip():
        raise click.BadParameter(f"expected key=value, got {text!r}", param_hint="--param")
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


@cli.command()
@click.argument("name")
@click.option("--model", default="mnist-cnn", show_default=True,
              help="Zoo model, or the architecture of --weights.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="A safetensors file of weights for the --model architecture.")
@click.option("--data", "data_name", default="mnist5k", show_default=True, help="Data set.")
@click.option("--eps", type=float, default=None, help="Radius (default: the attack's).")
@click.option("-n", "n", type=click.IntRange(min=1), default=100, show_default=True,
              help="Test images.")
@click.option("--param", "params", multiple=True, metavar="K=V",
              help="Attack parameter, repeatable (e.g. --param steps=20).")
@click.option("--target", type=click.Choice(["random", "least_likely", "next"]),
              default=None, help="Targeted attack with this target choice.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu or cuda.")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Gallery PNG (default: advlab-attack-NAME.png).")
def attack(name: str, model: str, weights: str | None, data_name: str, eps: float | None,
           n: int, params: tuple[str, ...], target: str | None, seed: int,
           device: str | None, batch_size: int, out: str | None) -> None:
    """Run one attack NAME on one model and print what it did."""
    from advlab import attacks
    from advlab.evaluation import results, runner
    from advlab.evaluation.store import atomic_write
    from advlab.report import plots

    kw = dict(_param(p) for p in params)
    if eps is not None:
        kw["eps"] = eps
    try:
        atk = attacks.get(name, **kw, seed=seed)
    except TypeError as exc:  # an unknown or ill-typed keyword of the attack's constructor
        raise Failure(f"attack {name!r} does not accept these parameters: {exc}") from None
    dev = runner.resolve_device(device)
    spec = runner.ModelSpec(model, weights, model) if weights else runner.ModelSpec(model)
    net = runner.load_model(spec).to(dev).eval()
    from advlab import data

    x, y = data.load(data_name, split="test", n=n)
    plan = runner.CellPlan(atk, target=target, shifts=(), noise=(), gallery=4,
                           batch_size=batch_size, seed=seed)
    bar = _batch_bar()
    rec = runner.evaluate(plan, net, x.to(dev), y.to(dev), on_batch=bar)
    bar.close()
    s = results.summarize_rows(rec.examples, rec.probes, rec.scores)
    norms = s["median_norms"]
    settings = ", ".join(f"{k}={v!r}" for k, v in vars(atk).items()
                         if not k.startswith("_") and not callable(v))
    rows = [["attack", f"{name}({settings})"], ["model", model],
            ["images", f"{s['n']} ({data_name})"],
            ["clean accuracy", _pct(s["clean_accuracy"])],
            ["robust accuracy", _pct(s["robust_accuracy"])],
            ["success rate", _pct(s["success_rate"])],
            ["median L0 / L1 / L2 / Linf", " / ".join(_num(norms[k]) for k in
                                                     ("l0", "l1", "l2", "linf"))],
            ["mean SSIM", _num(s["mean_ssim"])],
            ["confidence of wrong predictions", _pct(s["wrong_confidence"])],
            ["median queries", _num(s["median_queries"])], ["time", f"{rec.wall_s:.2f} s"]]
    width = max(len(k) for k, _ in rows)
    click.echo("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    classes = _classes(data_name)
    ex = rec.examples
    items = [plots.GalleryItem(xi, xa, int(ex["label"][i]), int(ex["clean_pred"][i]),
                               float(ex["clean_conf"][i]), int(ex["adv_pred"][i]),
                               float(ex["adv_conf"][i])) for i, xi, xa in rec.gallery]
    if items:
        path = atomic_write(out or f"advlab-attack-{name}.png",
                            plots.gallery([(name, items[:2]), ("", items[2:4])]
                                          if len(items) > 2 else [(name, items)], classes))
        click.echo(f"gallery: {path}")


def _classes(data_name: str) -> list[str] | None:
    from advlab import data

    try:
        return list(data.info(data_name).classes)
    except AdvlabError:
        return None


class _batch_bar:  # noqa: N801 - used like a function
    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc="batches", leave=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- list


@cli.command(name="list")
def list_attacks() -> None:
    """The registered attacks and their taxonomy (lecture: knowledge, goal, norm, kind)."""
    from advlab import attacks

    rows = [[name, t.knowledge, t.goal, t.norm, t.kind, "yes" if t.bounded else "no"]
            for name, t in attacks.available().items()]
    click.echo(_table(["attack", "knowledge", "goal", "norm", "kind", "bounded"], rows))


def main() -> None:
    """Entry point of the ``advlab`` script."""
    cli(prog_name="advlab")


if __name__ == "__main__":
    main()
