"""The experiment matrix, resumable: plan -> execute -> store.

:func:`run` turns a :class:`~advlab.evaluation.config.RunConfig` into typed cells
(:mod:`~advlab.evaluation.plan`), skips those already in the results database, cuts the rest
into shards and has an executor (:mod:`~advlab.evaluation.execute`: inline, local
processes, Ray) compute them with :mod:`~advlab.evaluation.measure`; this process alone
stores each shard as it arrives (:mod:`~advlab.evaluation.store`), so an interrupted run
loses at most the shards in flight. Three rounds:

1. the detectors the cells need are fitted, next to the shards of cells that need none;
2. the shards that use the fitted detectors, and (when the config fixes the reference eps)
   the sanity checks of every model and defense whose cells are all stored;
3. the remaining sanity checks, then the cells of the adaptive attacks their findings name.
The library logs and reports progress through a callback; it never prints.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from advlab.evaluation import ladder
from advlab.evaluation.config import PluginSpec, RunConfig, load_config, validate
from advlab.evaluation.context import Context, Images, Settings
from advlab.evaluation.execute import Executor, Job, make_executor
from advlab.evaluation.inputs import (
    Inputs,
    check_buildable,
    check_models,
    check_storage,
    class_names,
    environment,
    resolve_device,
)
from advlab.evaluation.measure import fit_detector, measure_shard, sanity_checks
from advlab.evaluation.plan import (
    Cell,
    Planner,
    SanityCell,
    SanityGroup,
    Shard,
    detectors_of,
    plan_cells,
    plugin_key,
    sanity_groups,
    shards,
)
from advlab.evaluation.results import collect, defense_label
from advlab.evaluation.store import CellRecord, Store
from advlab.io import fingerprint_data, fingerprint_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """A progress event: ``event`` is "plan" (cells known), "skip" (a stored cell), "cell"
    (a cell starts here), "batch" (a batch of it is done here), "shard" (a shard of a cell
    in several is stored) or "done" (a cell is stored). ``cell`` counts from 1 of
    ``cells``; ``batch`` from 1 of ``batches`` (for "shard": the shards stored of them)."""

    event: str
    cell: int = 0
    cells: int = 0
    label: str = ""
    batch: int = 0
    batches: int = 0


ProgressFn = Callable[[Progress], None]


class Runner:
    """Runs a :class:`RunConfig` into a :class:`Store` on an executor; see :func:`run`."""

    def __init__(self, cfg: RunConfig, store: Store, inputs: Inputs, executor: Executor,
                 progress: ProgressFn | None = None) -> None:
        self.cfg, self.store, self.inputs, self.executor = cfg, store, inputs, executor
        self.progress: ProgressFn = progress or (lambda p: None)
        self.detectors: dict[tuple[str, str], Any] = {}  # fitted, without their model_
        self.ctx: Context | None = None  # what the tasks share, see _context

    def run(self) -> dict[str, Any]:
        cfg, t0 = self.cfg, time.perf_counter()
        self.x, self.y = x, y = self.inputs.data()
        self.models = self.inputs.models()
        classes = None if self.inputs.given_data else class_names(cfg.data)
        check_models(self.models, x, y, classes)
        fps = {k: fingerprint_model(m) for k, m in self.models.items()}
        data_fp = fingerprint_data(x, y)
        cells = plan_cells(cfg, fps, data_fp, len(x))
        self.planner = Planner(cfg, fps, data_fp, len(x))  # for the sanity cells
        env = {**environment(self.inputs.device, cfg.seed, cfg.precision), "classes": classes}
        self.store.begin_run(cfg.name, cfg.to_dict(), env, [(c.key, c.spec) for c in cells])
        log.info("run %s: %d cells, %d worker(s)", cfg.name, len(cells), self.executor.workers)
        checks = bool(cfg.sanity.get("enabled", True))
        self._cells(cells, early_sanity=checks)
        groups = self._sanity() if checks else None
        if groups and cfg.adaptive["enabled"]:
            planned = {c.key for c in cells}
            extra = [c for c in self.planner.sanity(groups) if c.key not in planned]
            self.store.add_run_cells(cfg.name, [(c.key, c.spec) for c in extra])
            self._cells(extra)
        env.update(wall_s=time.perf_counter() - t0, skipped={})
        if groups is not None:
            env["sanity"] = [{"model": g.model, "defense": defense_label(vars(g.defense)),
                              "eps": g.eps, "findings": g.findings} for g in groups]
        self.store.end_run(cfg.name, env["wall_s"], env)
        return self.store.run(cfg.name)

    # -- the context the tasks share ------------------------------------------------------

    def _context(self, pairs: list[tuple[str, PluginSpec]], train: bool) -> Context:
        """The shared context, with the defended models of ``pairs`` (model, defense) and
        the training images when ``train``; a new version when it grew."""
        for name, d in pairs:
            self.inputs.defended(name, self.models[name], d)
        built = self.inputs.built()
        if self.ctx is None:
            self.ctx = Context(Settings.of(self.cfg), self.models, built,
                               Images.of(self.x, self.y, self.cfg.shard_size))
        if len(built) > len(self.ctx.defended) or (train and self.ctx.train is None):
            self.ctx.defended = built
            self.ctx.train = self.inputs.train() if train else self.ctx.train
            self.ctx.version += 1
        return self.ctx

    # -- cells ----------------------------------------------------------------------------

    def _cells(self, cells: list[Cell], early_sanity: bool = False) -> None:
        """Compute and store the cells not stored yet, in two rounds (module docstring)."""
        done = self.store.finished(c.key for c in cells)
        total = len(cells)
        self.progress(Progress("plan", 0, total))
        log.info("%d cells, %d already stored", total, len(done))
        for i, cell in enumerate(cells, 1):
            if cell.key in done:
                self.progress(Progress("skip", i, total, cell.label))
        todo = [(i, c) for i, c in enumerate(cells, 1) if c.key not in done]
        fits = {(c.model, plugin_key(d)): (c.model, d) for _, c in todo
                for d in detectors_of(c)} if todo else {}
        fits = {k: v for k, v in fits.items() if k not in self.detectors}
        ladders = any(isinstance(c, SanityCell) and c.attack == ladder.NAME for _, c in todo)
        ctx = self._context([(c.model, c.defense) for _, c in todo], bool(fits) or ladders)
        waits = [any((c.model, plugin_key(d)) in fits for d in detectors_of(c)) for _, c in todo]
        later = [t for t, w in zip(todo, waits) if w]
        self._execute(ctx, [(fit_detector, what) for what in fits.values()],
                      [t for t, w in zip(todo, waits) if not w], total)
        checks: list[Job] = []
        if early_sanity and self.cfg.report.get("eps") is not None:
            pending = {(c.model, plugin_key(c.defense)) for _, c in later}
            checks = self._sanity_jobs([g for g in self._groups() if (
                g.model, plugin_key(g.defense)) not in pending])
        self._execute(self._context([], False), checks, later, total)

    def _execute(self, ctx: Context, extra: list[Job], cells: list[tuple[int, Cell]],
                 total: int) -> None:
        """Run the jobs ``extra`` and the unstored shards of ``cells`` on the executor and
        store each result here as it arrives; with several workers the longest kinds go
        first (``extra``, then the adaptive cells) so that the short ones fill the end."""
        if self.executor.workers > 1:
            cells = sorted(cells, key=lambda c: c[1].kind == "attack")
        jobs, owner = list(extra), {}
        for i, cell in cells:
            parts = shards(cell, len(self.x), self.cfg.shard_size)
            stored = self.store.stored_shards(cell.key) if len(parts) > 1 else set()
            for s in parts:
                if (s.start, s.stop - s.start) not in stored:
                    owner[len(jobs)] = (i, len(parts))
                    jobs.append((measure_shard, s))
        if not jobs:
            return

        def on_batch(j: int, b: int, nb: int) -> None:
            if j in owner:
                i = owner[j][0]
                label = jobs[j][1].cell.label
                self.progress(Progress("cell" if b == 0 else "batch", i, total, label, b, nb))

        results = self.executor.map((ctx, dict(self.detectors)), jobs, on_batch)
        with contextlib.closing(results):
            for j, out in results:
                task, item = jobs[j]
                if task is measure_shard:
                    self._store(item, out, owner[j], total)
                elif task is fit_detector:
                    log.info("fitted detector %s on %s", item[1].name, item[0])
                    self.detectors[(item[0], plugin_key(item[1]))] = out
                else:
                    self.store.write_sanity(item.key, item.model, item.defense.name, out)

    def _store(self, shard: Shard, rec: CellRecord, owner: tuple[int, int], total: int
               ) -> None:
        (i, count), cell = owner, shard.cell
        n = min(cell.n or len(self.x), len(self.x))
        finished = self.store.write_cell(rec, n, self.cfg.gallery)
        if not finished:
            got = sum(k for _, k in self.store.stored_shards(cell.key))
            self.progress(Progress("shard", i, total, cell.label, got, n))
            return
        ex = self.store.examples(cell.key) if count > 1 else rec.examples
        ok = ex["adv_pred"] == ex["label"]
        log.info("%s: robust accuracy %.3f", cell.label, ok.mean())
        self.progress(Progress("done", i, total, cell.label))

    # -- sanity ---------------------------------------------------------------------------

    def _groups(self, flagged: list[SanityGroup] | None = None) -> list[SanityGroup]:
        """The sanity groups of the stored naive cells (at the reference eps, or at the other
        eps of the ``flagged`` groups), with their stored findings."""
        rec = self.store.run(self.cfg.name)
        naive = [c for c in collect(self.store, self.cfg.name)["cells"]
                 if c["adaptive"] is None]
        groups = sanity_groups(self.cfg, naive, dict(rec["cells"]),
                               lambda key: self.store.examples(key)["success"], flagged)
        for g in groups:
            g.findings = self.store.sanity(g.key)
        return groups

    def _sanity_jobs(self, groups: list[SanityGroup]) -> list[Job]:
        todo = [g for g in groups if g.findings is None]
        for g in todo:
            log.info("sanity checks on %s / %s at eps %g", g.model, g.defense.name, g.eps)
        return [(sanity_checks, g) for g in todo]

    def _sanity(self) -> list[SanityGroup]:
        """Sanity checks (:func:`advlab.evaluation.sanity.run_all`) on every attacked model
        at the report's reference eps, and at every other eps of a model and defense where
        one fired there, reusing the success rates of the stored naive cells; stored per
        (model weights, defense, eps, rates, settings), never repeated."""
        groups = self._checked(self._groups())
        flagged = [g for g in groups if any(f.get("level") == "warning"
                                            for f in g.findings or [])]
        return groups + (self._checked(self._groups(flagged)) if flagged else [])

    def _checked(self, groups: list[SanityGroup]) -> list[SanityGroup]:
        """``groups`` with their findings, the missing ones computed and stored."""
        jobs = self._sanity_jobs(groups)
        if jobs:
            ctx = self._context([(g.model, g.defense) for g in groups], False)
            self._execute(ctx, jobs, [], 0)
        for g in groups:
            g.findings = self.store.sanity(g.key)
        return groups


def run(config: RunConfig | None = None, *, root: str | os.PathLike = "runs",
        device: str | None = None, progress: ProgressFn | None = None,
        models: dict[str, nn.Module] | None = None,
        data: tuple[Tensor, Tensor] | None = None,
        train_data: tuple[Tensor, Tensor] | None = None,
        executor: Executor | None = None) -> dict[str, Any]:
    """Run an experiment matrix into ``root/advlab.sqlite``, skipping stored cells and shards.

    Args:
        config: the experiment (None: the built-in tour, ``tour.toml``).
        root: directory of the database and of the run folders.
        device: "auto", "cpu", "cuda" or "cuda:N" (overrides the config's); data and models
            are moved there.
        progress: called with :class:`Progress` events (per cell, shard and batch).
        models: name -> model, used instead of loading the configured model of that name.
        data: (x, y) evaluation images, instead of loading the configured data set.
        train_data: (x, y) for fitting detectors and trained defenses.
        executor: where the tasks run (None: the config's ``[execution]``).

    Returns:
        The run's record from the database (name, config, env, cells [(key, spec)], ...).
        Write results.json with :func:`advlab.evaluation.results.write_results`.
    """
    cfg = validate(config or load_config())
    dev = resolve_device(device or cfg.device)
    built = check_buildable(cfg, list(models or {}))  # the user's own models, built once
    check_storage(cfg, Path(root), list(models or {}))
    inputs = Inputs(cfg, dev, {**built, **(models or {})}, data, train_data)
    ex = executor or make_executor(cfg.execution, cfg.workers, dev)
    try:
        with Store(Path(root) / "advlab.sqlite") as store:
            return Runner(cfg, store, inputs, ex, progress).run()
    finally:
        if executor is None:
            ex.close()
