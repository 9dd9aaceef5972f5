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

A cell is written in one transaction, after all its rows are computed: a killed run loses
at most the cell in flight, and a finished cell is never recomputed.

Every file advlab writes outside SQLite goes through :func:`advlab.io.atomic_write` (temporary
file in the same directory, then :func:`os.replace`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from advlab.errors import DataError
from advlab.io import atomic_write  # noqa: F401  (re-exported: evaluation writes through it)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

EXAMPLE_COLUMNS = ("label", "clean_pred", "clean_conf", "adv_pred", "adv_conf", "target",
                   "success", "l0", "l1", "l2", "linf", "ssim", "queries")
PROBE_COLUMNS = ("clean_pred", "clean_conf", "adv_pred", "adv_conf")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY, config TEXT NOT NULL, env TEXT NOT NULL,
    started REAL NOT NULL, finished REAL, wall_s REAL);
CREATE TABLE IF NOT EXISTS run_cells (
    run TEXT NOT NULL, position INTEGER NOT NULL, key TEXT NOT NULL, spec TEXT NOT NULL,
    PRIMARY KEY (run, position));
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, spec TEXT NOT NULL, model TEXT NOT NULL, defense TEXT NOT NULL,
    attack TEXT NOT NULL, eps REAL, seed INTEGER NOT NULL, n INTEGER NOT NULL,
    started REAL NOT NULL, finished REAL NOT NULL, wall_s REAL NOT NULL, device TEXT NOT NULL,
    info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS examples (
    key TEXT NOT NULL, idx INTEGER NOT NULL, label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL, clean_conf REAL NOT NULL,
    adv_pred INTEGER NOT NULL, adv_conf REAL NOT NULL, target INTEGER,
    success INTEGER NOT NULL, l0 REAL NOT NULL, l1 REAL NOT NULL, l2 REAL NOT NULL,
    linf REAL NOT NULL, ssim REAL, queries INTEGER,
    PRIMARY KEY (key, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS probes (
    key TEXT NOT NULL, probe TEXT NOT NULL, idx INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL, clean_conf REAL NOT NULL,
    adv_pred INTEGER NOT NULL, adv_conf REAL NOT NULL,
    PRIMARY KEY (key, probe, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scores (
    key TEXT NOT NULL, detector TEXT NOT NULL, idx INTEGER NOT NULL,
    clean REAL NOT NULL, adv REAL NOT NULL,
    PRIMARY KEY (key, detector, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sanity (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, defense TEXT NOT NULL,
    findings TEXT NOT NULL, finished REAL NOT NULL);
CREATE TABLE IF NOT EXISTS gallery (
    key TEXT NOT NULL, idx INTEGER NOT NULL, shape TEXT NOT NULL,
    x BLOB NOT NULL, x_adv BLOB NOT NULL, PRIMARY KEY (key, idx));
"""


# ----------------------------------------------------------------------------- helpers


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no spaces and floats written exactly: equal specs, equal text.

    Raises:
        DataError: a value that JSON cannot hold faithfully (NaN, Inf, objects).
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"cannot write a canonical record of {obj!r}: {exc}") from exc


def cell_key(spec: dict[str, Any]) -> str:
    """The cell's identity: the first 24 hex digits of sha256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:24]


#: the free space a folder that advlab writes to must have before a run starts
MIN_FREE = 16 * 2**20


def check_writable(folder: str | os.PathLike, what: str) -> Path:
    """Make sure advlab can write into ``folder`` (created when missing) before any work
    that would be lost if it could not: a file is created and removed there, and the disk
    must have :data:`MIN_FREE` bytes free.

    Args:
        folder: the folder.
        what: how the error names it ("the run folder").

    Returns:
        The folder.

    Raises:
        DataError: it cannot be created or written (read-only, no permission) or the disk
            is (nearly) full.
    """
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".advlab-check-"):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise DataError(f"cannot write {what} {folder}: {exc.strerror or exc}") from exc
    if free < MIN_FREE:
        raise DataError(f"the disk holding {what} {folder} is full ({free // 2**20} MiB "
                        f"free, advlab needs at least {MIN_FREE // 2**20} MiB)")
    return folder


def _none_if_nan(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


# ----------------------------------------------------------------------------- records


@dataclass
class CellRecord:
    """Everything one finished cell writes, as columns of per-example values.

    Attributes:
        key: :func:`cell_key` of ``spec``.
        spec: the cell's canonical description (model, defense, attack, params, seed, data).
        examples: column name (:data:`EXAMPLE_COLUMNS`) -> array (N,); ``idx`` -> indices.
        probes: probe name -> {:data:`PROBE_COLUMNS` -> (N,)}.
        scores: detector name -> {"clean": (N,), "adv": (N,)}.
        gallery: (idx, x, x_adv) triples of float32 arrays C x H x W.
        started, finished: Unix times; wall_s: seconds spent; device: where it ran.
        info: extras (the attack's repr, skipped pieces, ...).
    """

    key: str
    spec: dict[str, Any]
    examples: dict[str, np.ndarray]
    probes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    gallery: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    wall_s: float = 0.0
    device: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)


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

    def write_cell(self, rec: CellRecord) -> None:
        """Store a finished cell and all its rows in one transaction (replacing any old copy)."""
        ex = rec.examples
        n = len(ex["idx"])
        spec = rec.spec
        eps = spec.get("params", {}).get("eps")
        with self.transaction() as db:
            for table in ("examples", "probes", "scores", "gallery", "cells"):
                db.execute(f"DELETE FROM {table} WHERE key = ?", (rec.key,))
            db.executemany(
                f"INSERT INTO examples VALUES (?, ?, {', '.join('?' * len(EXAMPLE_COLUMNS))})",
                [(rec.key, int(ex["idx"][i]), *(_column(ex[c], i) for c in EXAMPLE_COLUMNS))
                 for i in range(n)])
            for probe, cols in rec.probes.items():
                db.executemany("INSERT INTO probes VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(rec.key, probe, int(ex["idx"][i]),
                                 *(_column(cols[c], i) for c in PROBE_COLUMNS))
                                for i in range(n)])
            for det, cols in rec.scores.items():
                db.executemany("INSERT INTO scores VALUES (?, ?, ?, ?, ?)",
                               [(rec.key, det, int(ex["idx"][i]), float(cols["clean"][i]),
                                 float(cols["adv"][i])) for i in range(n)])
            db.executemany("INSERT INTO gallery VALUES (?, ?, ?, ?, ?)",
                           [(rec.key, int(i), json.dumps(list(x.shape)),
                             np.ascontiguousarray(x, np.float32).tobytes(),
                             np.ascontiguousarray(xa, np.float32).tobytes())
                            for i, x, xa in rec.gallery])
            db.execute("INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (rec.key, canonical_json(spec), spec["model"]["name"],
                        spec["defense"]["name"], spec["attack"], eps, spec["seed"], n,
                        rec.started, rec.finished, rec.wall_s, rec.device,
                        json.dumps(rec.info)))
        log.debug("stored cell %s (%d examples)", rec.key, n)

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
        rows = self._db.execute("SELECT probe, clean_pred, clean_conf, adv_pred, adv_conf "
                                "FROM probes WHERE key = ? ORDER BY probe, idx",
                                (key,)).fetchall()
        out: dict[str, dict[str, list]] = {}
        for probe, *vals in rows:
            d = out.setdefault(probe, {c: [] for c in PROBE_COLUMNS})
            for c, v in zip(PROBE_COLUMNS, vals, strict=True):
                d[c].append(v)
        return {p: {c: np.asarray(v) for c, v in d.items()} for p, d in out.items()}

    def scores(self, key: str) -> dict[str, dict[str, np.ndarray]]:
        """A cell's detector scores: detector -> {"clean": (N,), "adv": (N,)} in idx order."""
        rows = self._db.execute("SELECT detector, clean, adv FROM scores WHERE key = ? "
                                "ORDER BY detector, idx", (key,)).fetchall()
        out: dict[str, dict[str, list]] = {}
        for det, c, a in rows:
            d = out.setdefault(det, {"clean": [], "adv": []})
            d["clean"].append(c)
            d["adv"].append(a)
        return {k: {c: np.asarray(v, np.float64) for c, v in d.items()} for k, d in out.items()}

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
