"""The results database: every finished cell of an experiment and its per-example rows.

One SQLite file (``runs/advlab.sqlite``, stdlib :mod:`sqlite3`, WAL journal) holds:

- ``cells``: one row per finished cell (model, defense, attack, params, seed, data subset),
  keyed by :func:`cell_key`, the hash of the cell's canonical JSON;
- ``examples``: per example of a cell: label, clean and adversarial prediction and
  confidence, target, success, the four norms, SSIM, queries;
- ``probes``: per example, the predictions of other functions on the clean and the
  adversarial image: other models (``transfer:NAME``) and small transformations
  (``shift:1``, ``noise:0.05``) for the fragility property;
- ``scores``: per example, each detector's score on the clean and the adversarial image;
- ``gallery``: a few (clean, adversarial) image pairs per cell for the report;
- ``sanity``: the findings of the sanity checks per (model, defense, settings);
- ``runs`` and ``run_cells``: which cells a named run consists of, its configuration and
  environment, so a report can be re-rendered from the database alone.

- ``shards``: the stored shards of cells computed in shards (first row, rows, timing).

A cell, or a shard of one, is written in one transaction after all its rows are computed:
a killed run loses at most the shards in flight, and a finished cell or shard is never
recomputed. The runner's process is this database's only writer.

Every file advlab writes outside SQLite goes through :func:`atomic_write` (in
:mod:`~advlab.evaluation.records`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from advlab.errors import DataError
from advlab.evaluation.records import (
    EXAMPLE_COLUMNS,
    PROBE_COLUMNS,
    CellRecord,
    atomic_write,  # noqa: F401 - part of the store's interface
    canonical_json,
    cell_key,  # noqa: F401
    pick_gallery,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: the tables (``store.sql``, package data)
_SCHEMA = Path(__file__).with_name("store.sql").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- helpers


def _none_if_nan(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


# ----------------------------------------------------------------------------- records


def _column(a: np.ndarray, i: int) -> Any:
    v = a[i]
    return _none_if_nan(v.item() if hasattr(v, "item") else v)


# ----------------------------------------------------------------------------- the store


class Store:
    """The SQLite results database.

    Args:
        path: the database file; created (with its directory) when missing.
        create: create the file and its tables when missing; if False, the file must be
            an advlab results database already (nothing is written to open it).

    Use as a context manager, or call :meth:`close`.

    Raises:
        DataError: a file that is not an advlab results database, or of another schema
            version; a database that cannot be written (read-only file, folder or file
            system; a full disk), said as such: the stored results are not at fault.
    """

    def __init__(self, path: str | os.PathLike, create: bool = True) -> None:
        self.path = Path(path)
        if not create and (not self.path.is_file() or self.path.stat().st_size == 0):
            raise DataError(f"{self.path} is not an advlab results database "
                            f"({'an empty file' if self.path.is_file() else 'no such file'})")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            if create:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._check_version()
        except sqlite3.OperationalError as exc:
            if not create and "no such table" in str(exc):
                raise DataError(f"{self.path} is an SQLite file without advlab's tables, not "
                                "an advlab results database") from exc
            raise self._fault(exc) from exc
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path} is not a usable advlab results database ({exc}); "
                            "move it away to start a fresh one") from exc
        except OSError as exc:
            raise DataError(f"cannot create the results database {self.path}: "
                            f"{exc.strerror or exc}") from exc

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise DataError(f"{self.path} has results schema {row[0]}, this advlab writes "
                            f"{SCHEMA_VERSION}; move the file away to start a fresh one")

    def _fault(self, exc: sqlite3.OperationalError) -> DataError:
        """What is wrong when SQLite cannot open or write the database: a full disk, a
        read-only file, folder or file system, or else SQLite's own words."""
        text = str(exc)
        if "full" in text:
            return DataError(f"the disk holding {self.path} is full ({text}); what was being "
                             "stored was not written: free space and rerun to resume")
        locked = [p for p in (self.path, self.path.parent)
                  if p.exists() and not os.access(p, os.W_OK)]
        if locked or "readonly" in text:
            where = f"{locked[0]} is read-only" if locked else "it is read-only"
            return DataError(f"cannot open or write the results database {self.path}: {where} "
                             f"({text}); its stored results are intact; make it writable or "
                             "use another --root")
        return DataError(f"cannot use the results database {self.path}: {text}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (KeyboardInterrupt too);
        SQLite's failures to write (full disk, read-only) raise :class:`DataError`."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise self._fault(exc) from exc

    # -- runs -----------------------------------------------------------------------------

    def begin_run(self, name: str, config: dict[str, Any], env: dict[str, Any],
                  cells: list[tuple[str, dict[str, Any]]]) -> None:
        """Record a run's configuration, environment and its ordered cells (key, spec)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, NULL, NULL)",
                       (name, json.dumps(config), json.dumps(env), time.time()))
            db.execute("DELETE FROM run_cells WHERE run = ?", (name,))
            db.executemany("INSERT INTO run_cells VALUES (?, ?, ?, ?)",
                           [(name, i, k, canonical_json(s)) for i, (k, s) in enumerate(cells)])

    def add_run_cells(self, name: str, cells: list[tuple[str, dict[str, Any]]]) -> None:
        """Append cells (key, spec) to a recorded run (cells planned from its results, such
        as the attacks that sanity findings name)."""
        with self.transaction() as db:
            (start,) = db.execute("SELECT count(*) FROM run_cells WHERE run = ?",
                                  (name,)).fetchone()
            db.executemany("INSERT INTO run_cells VALUES (?, ?, ?, ?)",
                           [(name, start + i, k, canonical_json(s))
                            for i, (k, s) in enumerate(cells)])

    def end_run(self, name: str, wall_s: float, env: dict[str, Any] | None = None) -> None:
        """Mark a run finished after ``wall_s`` seconds (optionally updating its env)."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET finished = ?, wall_s = ? WHERE name = ?",
                       (time.time(), wall_s, name))
            if env is not None:
                db.execute("UPDATE runs SET env = ? WHERE name = ?", (json.dumps(env), name))

    def run(self, name: str) -> dict[str, Any]:
        """A run's record: name, config, env, started, finished, wall_s, cells [(key, spec)].

        Raises:
            DataError: no run of that name in this database.
        """
        row = self._db.execute("SELECT name, config, env, started, finished, wall_s FROM runs "
                               "WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise DataError(f"no run named {name!r} in {self.path}; runs: "
                            f"{', '.join(self.runs()) or 'none'}")
        cells = self._db.execute("SELECT key, spec FROM run_cells WHERE run = ? "
                                 "ORDER BY position", (name,)).fetchall()
        return {"name": row[0], "config": json.loads(row[1]), "env": json.loads(row[2]),
                "started": row[3], "finished": row[4], "wall_s": row[5],
                "cells": [(k, json.loads(s)) for k, s in cells]}

    def runs(self) -> list[str]:
        """Names of the runs recorded in this database."""
        return [r[0] for r in self._db.execute("SELECT name FROM runs ORDER BY started")]

    # -- cells ----------------------------------------------------------------------------

    def finished(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` whose cells are stored."""
        keys = list(keys)
        done: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            q = f"SELECT key FROM cells WHERE key IN ({','.join('?' * len(chunk))})"
            done.update(r[0] for r in self._db.execute(q, chunk))
        return done

    def write_cell(self, rec: CellRecord, total: int | None = None, gallery: int = 0) -> bool:
        """Store a cell's rows in one transaction, replacing any old copy of them: all of
        them, or one shard's of a cell of ``total`` examples (``rec.examples["idx"]`` says
        which). The cell is finished when its shards hold all ``total`` rows; it then keeps
        ``gallery`` image pairs from its shards' candidates (:func:`pick_gallery`).

        Returns:
            Whether the cell is finished.
        """
        ex, key = rec.examples, rec.key
        n = len(ex["idx"])
        shard = total is not None and n != total
        lo, hi = (int(ex["idx"].min()), int(ex["idx"].max())) if n else (0, -1)
        with self.transaction() as db:
            where, args = ("key = ? AND idx BETWEEN ? AND ?", (key, lo, hi)) if shard else \
                ("key = ?", (key,))
            for table in ("examples", "probes", "scores", "gallery"):
                db.execute(f"DELETE FROM {table} WHERE {where}", args)
            db.execute("DELETE FROM cells WHERE key = ?", (key,))
            db.execute("DELETE FROM shards WHERE key = ? AND start <= ? AND start + n > ?",
                       (key, hi, lo) if shard else (key, 1 << 62, -1))
            self._insert_rows(db, rec)
            if shard:
                db.execute("INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (key, lo, n, rec.started, rec.finished, rec.wall_s, rec.device))
                done, t0, t1, wall = db.execute(
                    "SELECT sum(n), min(started), max(finished), sum(wall_s) FROM shards "
                    "WHERE key = ?", (key,)).fetchone()
                if done < total:
                    log.debug("stored rows %d-%d of cell %s", lo, hi, key)
                    return False
                self._keep_gallery(db, key, gallery)
                rec = dataclasses.replace(rec, started=t0, finished=t1, wall_s=wall,
                                          info={**rec.info, "shards": True})
                n = done
            spec = rec.spec
            db.execute("INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (key, canonical_json(spec), spec["model"]["name"],
                        spec["defense"]["name"], spec["attack"],
                        spec.get("params", {}).get("eps"), spec["seed"], n, rec.started,
                        rec.finished, rec.wall_s, rec.device, json.dumps(rec.info)))
        log.debug("stored cell %s (%d examples)", key, n)
        return True

    @staticmethod
    def _insert_rows(db: sqlite3.Connection, rec: CellRecord) -> None:
        ex, key = rec.examples, rec.key
        idx = [int(i) for i in ex["idx"]]
        db.executemany(
            f"INSERT INTO examples VALUES (?, ?, {', '.join('?' * len(EXAMPLE_COLUMNS))})",
            [(key, k, *(_column(ex[c], i) for c in EXAMPLE_COLUMNS)) for i, k in enumerate(idx)])
        for probe, cols in rec.probes.items():
            db.executemany("INSERT INTO probes VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(key, probe, k, *(_column(cols[c], i) for c in PROBE_COLUMNS))
                            for i, k in enumerate(idx)])
        for det, cols in rec.scores.items():
            db.executemany("INSERT INTO scores VALUES (?, ?, ?, ?, ?)",
                           [(key, det, k, float(cols["clean"][i]), float(cols["adv"][i]))
                            for i, k in enumerate(idx)])
        db.executemany("INSERT INTO gallery VALUES (?, ?, ?, ?, ?)",
                       [(key, int(i), json.dumps(list(x.shape)),
                         np.ascontiguousarray(x, np.float32).tobytes(),
                         np.ascontiguousarray(xa, np.float32).tobytes())
                        for i, x, xa in rec.gallery])

    @staticmethod
    def _keep_gallery(db: sqlite3.Connection, key: str, k: int) -> None:
        """The cell's first k gallery pairs (:func:`pick_gallery`) out of its shards' ones."""
        rows = db.execute("SELECT g.idx, e.label, e.clean_pred, e.success, g.shape, g.x, "
                          "g.x_adv FROM gallery g JOIN examples e ON e.key = g.key AND "
                          "e.idx = g.idx WHERE g.key = ? ORDER BY g.idx", (key,)).fetchall()
        cols = {c: np.array([r[j] for r in rows], np.int64)
                for j, c in enumerate(("idx", "label", "clean_pred", "success"))}
        keep = [rows[i] for i in pick_gallery(cols, k)] if rows else []
        db.execute("DELETE FROM gallery WHERE key = ?", (key,))
        db.executemany("INSERT INTO gallery VALUES (?, ?, ?, ?, ?)",
                       [(key, r[0], *r[4:]) for r in keep])

    def stored_shards(self, key: str) -> set[tuple[int, int]]:
        """(first row, rows) of each stored shard of a cell not yet finished."""
        return {(a, n) for a, n in self._db.execute(
            "SELECT start, n FROM shards WHERE key = ?", (key,))}

    def cell(self, key: str) -> dict[str, Any] | None:
        """A stored cell's record (spec, timing, device, info), or None."""
        row = self._db.execute("SELECT spec, n, started, finished, wall_s, device, info "
                               "FROM cells WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return {"key": key, "spec": json.loads(row[0]), "n": row[1], "started": row[2],
                "finished": row[3], "wall_s": row[4], "device": row[5],
                "info": json.loads(row[6])}

    def examples(self, key: str) -> dict[str, np.ndarray]:
        """A cell's per-example columns (``idx`` and :data:`EXAMPLE_COLUMNS`), in idx order.

        Missing values (no target, no queries) read as -1 for integer columns and NaN for
        SSIM.
        """
        cols = ("idx",) + EXAMPLE_COLUMNS
        rows = self._db.execute(f"SELECT {', '.join(cols)} FROM examples WHERE key = ? "
                                "ORDER BY idx", (key,)).fetchall()
        out: dict[str, np.ndarray] = {}
        for j, c in enumerate(cols):
            vals = [r[j] for r in rows]
            if c in ("clean_conf", "adv_conf", "l0", "l1", "l2", "linf", "ssim"):
                out[c] = np.array([np.nan if v is None else v for v in vals], np.float64)
            elif c == "success":
                out[c] = np.array(vals, bool)
            else:
                out[c] = np.array([-1 if v is None else v for v in vals], np.int64)
        return out

    def probes(self, key: str) -> dict[str, dict[str, np.ndarray]]:
        """A cell's probes: name -> {clean_pred, clean_conf, adv_pred, adv_conf} in idx order."""
        return {p: {c: np.asarray(v) for c, v in d.items()}
                for p, d in self._grouped(key, "probes", "probe", PROBE_COLUMNS).items()}

    def scores(self, key: str) -> dict[str, dict[str, np.ndarray]]:
        """A cell's detector scores: detector -> {"clean": (N,), "adv": (N,)} in idx order."""
        return {k: {c: np.asarray(v, np.float64) for c, v in d.items()}
                for k, d in self._grouped(key, "scores", "detector", ("clean", "adv")).items()}

    def _grouped(self, key: str, table: str, by: str, cols: tuple[str, ...]
                 ) -> dict[str, dict[str, list]]:
        out: dict[str, dict[str, list]] = {}
        for group, *vals in self._db.execute(f"SELECT {by}, {', '.join(cols)} FROM {table} "
                                             f"WHERE key = ? ORDER BY {by}, idx", (key,)):
            d = out.setdefault(group, {c: [] for c in cols})
            for c, v in zip(cols, vals, strict=True):
                d[c].append(v)
        return out

    def gallery(self, key: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """A cell's stored (idx, x, x_adv) image pairs (float32 C x H x W)."""
        rows = self._db.execute("SELECT idx, shape, x, x_adv FROM gallery WHERE key = ? "
                                "ORDER BY rowid", (key,)).fetchall()
        out = []
        for idx, shape, x, xa in rows:
            s = tuple(json.loads(shape))
            out.append((idx, np.frombuffer(x, np.float32).reshape(s),
                        np.frombuffer(xa, np.float32).reshape(s)))
        return out

    # -- sanity findings ------------------------------------------------------------------

    def sanity(self, key: str) -> list[dict[str, Any]] | None:
        """Stored sanity findings under ``key``, or None."""
        row = self._db.execute("SELECT findings FROM sanity WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def write_sanity(self, key: str, model: str, defense: str,
                     findings: list[dict[str, Any]]) -> None:
        """Store the sanity findings of one (model, defense, settings), one transaction."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO sanity VALUES (?, ?, ?, ?, ?)",
                       (key, model, defense, json.dumps(findings), time.time()))
