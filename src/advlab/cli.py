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
import os
import signal
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
        except AdvlabError as exc:  # one line, whatever the message holds
            raise Failure(" ".join(str(exc).split())) from None


class BatchSize(click.ParamType):
    """A positive integer or "auto"."""

    name = "batch_size"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if value == "auto" or isinstance(value, int) and value > 0:
            return value
        if isinstance(value, str) and value.isdigit() and int(value) > 0:
            return int(value)
        self.fail(f'{value!r} is neither a positive integer nor "auto"', param, ctx)


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


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


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
        elif p.event == "shard":  # a cell in shards: its stored images
            self.cells.set_postfix_str(f"{p.label}: {p.batch}/{p.batches} images stored")
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
@click.option("--device", default=None,
              help="auto, cpu, cuda or cuda:N (default: the config's, else cpu).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="The attacks' forward and backward (default: the config's, else fp32); "
              "every figure is re-checked in fp32.")
@click.option("--name", default=None, help="Run name (default: the config's).")
@click.option("-n", "n", type=click.IntRange(min=1), default=None,
              help="Number of test images (overrides the config; attacks with a smaller n "
              "keep theirs).")
@click.option("--batch-size", type=BatchSize(), default=None,
              help='Batch size, or "auto" (halved on CUDA out-of-memory; overrides the '
              'config).')
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Processes computing cells on CPU (overrides the config; 0: one per "
              "core).")
@click.option("--executor", type=click.Choice(["processes", "inline", "ray"]), default=None,
              help="Where the work runs (overrides [execution]): forked processes of this "
              "machine, this process, or a Ray cluster.")
@click.option("--address", default=None,
              help="Ray cluster address (with --executor ray; default: a local cluster).")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Images per stored shard of a cell (overrides the config).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--show-config", is_flag=True, help="Print the built-in configuration and exit.")
def run(config: str | None, root: str, device: str | None, precision: str | None,
        name: str | None, n: int | None, batch_size: int | str | None, workers: int | None,
        executor: str | None, address: str | None, shard_size: int | None, progress: bool,
        show_config: bool) -> None:
    """Evaluate models x defenses x attacks and write runs/<name>/report.html.

    With no CONFIG, runs the built-in tour on the embedded MNIST subset: FGSM, BIM, PGD at
    several eps on the zoo's mnist-mlp and mnist-cnn; on mnist-cnn, seven detectors and a
    bit-depth defense under naive and adaptive attacks, and black-box attacks (Square,
    Bandits, SimBA) with their query counts; on mnist-mlp, defensive distillation
    (`advlab run --show-config`). Finished cells are stored in ROOT/advlab.sqlite and never
    recomputed: interrupt and rerun to resume.
    """
    from advlab import evaluation, report
    from advlab.evaluation.schema import run_name

    if show_config:
        click.echo(evaluation.DEFAULT_TOML, nl=False)
        return
    cfg = evaluation.load_config(config)
    cfg.name = cfg.name if name is None else run_name(name, "--name")
    if n is not None:
        cfg.data = dataclasses.replace(cfg.data, n=n)
    cfg.batch_size = batch_size or cfg.batch_size
    cfg.precision = precision or cfg.precision
    cfg.workers = cfg.workers if workers is None else workers
    cfg.shard_size = shard_size or cfg.shard_size
    if executor is not None or address is not None:
        cfg.execution = dataclasses.replace(
            cfg.execution, executor=executor or ("ray" if address else cfg.execution.executor),
            address=address or cfg.execution.address)
    t0 = time.perf_counter()
    bars = Bars(progress)
    signal.signal(signal.SIGTERM, _interrupt)  # kill, timeout, schedulers: stop like Ctrl-C
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
    curves = _curves(results)
    if curves:
        click.echo("\nrobustness curves (robust accuracy at each grid eps: one minimum-norm "
                   "run, confirmed there by a bounded attack)\n" + curves)
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


def _curves(results: dict[str, Any]) -> str:
    """One line per robustness curve: its robust accuracy at each grid eps, and the share of
    images never fooled at any radius."""
    lines = []
    for c in results["cells"]:
        if c.get("curve"):
            k = c["curve"]
            at = ", ".join(f"{e:g}: {_pct(a)}" for e, a in zip(k["grid"], k["accuracy"],
                                                               strict=True))
            lines.append(f"  {c['model']} / {c['defense']}: {c['label']} ({k['norm']}): "
                         f"{at}; never fooled {_pct(k['robust'])}")
    return "\n".join(lines)


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


def _model_spec(model: str, weights: str | None, kwargs: str | None, mean: str | None,
                std: str | None, config: str | None) -> Any:
    """--model and its options as a [[models]] table, validated like one; with --config, the
    table of that name in the configuration file."""
    from advlab import evaluation, models

    if config is not None:
        specs = {m.name: m for m in evaluation.load_config(config).models}
        if model not in specs:
            raise Failure(f"{config} has no [[models]] named {model!r}; it has "
                          f"{', '.join(specs)}")
        return specs[model]
    d: dict[str, Any] = {"name": model}
    if ":" in model:
        d["factory"] = model
    if weights is not None:
        d["weights"] = weights
        if ":" not in model:
            d["arch"] = model
    if kwargs is not None:
        try:
            d["kwargs"] = json.loads(kwargs)
        except json.JSONDecodeError as exc:
            raise Failure(f"--kwargs must be a JSON object: {exc}") from None
    if (mean is None) != (std is None):
        raise Failure("--mean and --std go together")
    if mean is not None and std is not None:
        d["normalize"] = {k: [float(v) for v in text.split(",")]
                          for k, text in (("mean", mean), ("std", std))}
    return models.model_spec(d, "--model")


@cli.command()
@click.argument("name")
@click.option("--model", default="mnist-cnn", show_default=True,
              help="Zoo model, the zoo architecture of --weights, or your own network's "
              "factory: package.module:callable or path/to/net.py:callable.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="Weights for --model (safetensors, or a torch state dict).")
@click.option("--kwargs", default=None, help='The factory\'s arguments as JSON, e.g. '
              '\'{"num_classes": 10}\'.')
@click.option("--mean", default=None, help="Normalize in front of the model: per-channel "
              "means, comma-separated (with --std).")
@click.option("--std", default=None, help="Per-channel stds, comma-separated (with --mean).")
@click.option("--config", "config", default=None, type=click.Path(dir_okay=False),
              help="Take --model (a [[models]] name) and the data from this configuration.")
@click.option("--data", "data_name", default=None,
              help="Data set: a name, folder:PATH or npz:PATH (default: --config's, else "
              "mnist5k).")
@click.option("--root", "data_root", default=None, type=click.Path(file_okay=False),
              help="Folder of the data set's files (mnist, fashion-mnist, cifar10).")
@click.option("--resize", type=click.IntRange(min=1), default=None,
              help="Resize the images to this size (square).")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None,
              help="Convert the images to 1 or 3 channels.")
@click.option("--subset", type=click.Choice(["first", "random", "stratified"]),
              default="first", show_default=True,
              help="Which -n test images: the first, or a draw seeded by --seed.")
@click.option("--eps", type=float, default=None, help="Radius (default: the attack's).")
@click.option("-n", "n", type=click.IntRange(min=1), default=100, show_default=True,
              help="Test images.")
@click.option("--param", "params", multiple=True, metavar="K=V",
              help="Attack parameter, repeatable (e.g. --param steps=20).")
@click.option("--target", type=click.Choice(["random", "least_likely", "next"]),
              default=None, help="Targeted attack with this target choice.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              show_default=True, help="The attack's forward and backward.")
@click.option("--batch-size", type=BatchSize(), default=500, show_default=True,
              help='Batch size, or "auto" (halved on CUDA out-of-memory).')
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Gallery PNG (default: advlab-attack-NAME.png).")
def attack(name: str, model: str, weights: str | None, kwargs: str | None, mean: str | None,
           std: str | None, config: str | None, data_name: str | None, data_root: str | None,
           resize: Any, channels: Any, subset: str, eps: float | None, n: int,
           params: tuple[str, ...],
           target: str | None, seed: int, device: str | None, precision: str,
           batch_size: int | str, out: str | None) -> None:
    """Run one attack NAME on one model and print what it did."""
    from advlab import attacks, data
    from advlab.evaluation import inputs, results
    from advlab.evaluation.measure import CellPlan, measure
    from advlab.evaluation.records import atomic_write, check_writable
    from advlab.report import plots

    kw = dict(_param(p) for p in params)
    if eps is not None:
        kw["eps"] = eps
    atk = attacks.get(name, **kw, seed=seed)  # unknown or ill-typed keywords: ParameterError
    dev = inputs.resolve_device(device)
    out_path = Path(out or f"advlab-attack-{name}.png")
    check_writable(out_path.parent, "the folder of --out")
    spec = _model_spec(model, weights, kwargs, mean, std, config)
    inputs.check_cache([spec])
    net = inputs.load_model(spec).to(dev).eval()
    if data_name is None and config is not None:  # the configuration's data, -n of them
        from advlab import evaluation

        d = evaluation.load_config(config).data
        data_name, data_root = d.name, data_root or d.root
        resize, channels = resize or d.resize, channels or d.channels
    data_name = data_name or "mnist5k"
    x, y = data.load(data_name, split="test", root=data_root, n=n, subset=subset, seed=seed,
                     resize=resize, channels=None if channels is None else int(channels))
    x, y = x.to(dev), y.to(dev)
    classes = _classes(data_name, data_root)
    inputs.check_models({model: net}, x, y, classes)
    plan = CellPlan(atk, target=target, shifts=(), noise=(), gallery=4,
                    batch_size=batch_size, seed=seed, precision=precision)
    bar = _batch_bar()
    rec = measure(plan, net, x, y, on_batch=bar)
    bar.close()
    s = results.summarize_rows(rec.examples, rec.probes, rec.scores)
    norms = s["median_norms"]
    rows = [["attack", f"{name}: {atk!r}"], ["model", model],
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
    ex = rec.examples
    items = [plots.GalleryItem(xi, xa, int(ex["label"][i]), int(ex["clean_pred"][i]),
                               float(ex["clean_conf"][i]), int(ex["adv_pred"][i]),
                               float(ex["adv_conf"][i])) for i, xi, xa in rec.gallery]
    if items:
        path = atomic_write(out_path,
                            plots.gallery([(name, items[:2]), ("", items[2:4])]
                                          if len(items) > 2 else [(name, items)], classes))
        click.echo(f"gallery: {path}")


def _classes(data_name: str, root: str | None = None) -> list[str] | None:
    from advlab import data

    try:
        return list(data.info(data_name, root).classes)
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
    """Entry point of the ``advlab`` script. An interrupted run (SIGINT, SIGTERM) has
    stored what it finished and stopped its workers; it leaves at once, without the
    interpreter's teardown of torch and friends (seconds on a loaded machine)."""
    try:
        cli(prog_name="advlab")
    except SystemExit as exc:
        if exc.code != 130:
            raise
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


if __name__ == "__main__":
    main()
