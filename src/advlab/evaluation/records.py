"""What one cell is made of: its canonical spec and key, and its per-example record.

A cell's identity is its spec written as canonical JSON (:func:`canonical_json`) and hashed
(:func:`cell_key`); its results travel as a :class:`CellRecord` (one per shard, see
:mod:`advlab.evaluation.plan`) to the results database (:mod:`advlab.evaluation.store`).
Every file advlab writes outside that database goes through :func:`atomic_write`
(a temporary file in the same directory, then :func:`os.replace`), and every folder it will
write is checked first by :func:`check_writable`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from advlab.errors import DataError
from advlab.io import atomic_write  # noqa: F401  (the one atomic write, part of this interface)

EXAMPLE_COLUMNS = ("label", "clean_pred", "clean_conf", "adv_pred", "adv_conf", "target",
                   "success", "l0", "l1", "l2", "linf", "ssim", "queries")
PROBE_COLUMNS = ("clean_pred", "clean_conf", "adv_pred", "adv_conf")


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


def pick_gallery(rows: dict[str, np.ndarray], k: int) -> list[int]:
    """Up to k rows (positions) for the report's gallery: correct and fooled first, then
    correct and not fooled, then the misclassified ones; in idx order within each group.

    The first k of a cell are among the first k of each of its shards, so a cell stored in
    shards keeps each shard's first k and picks from those when complete.
    """
    ok = rows["clean_pred"] == rows["label"]
    s = np.asarray(rows["success"]).astype(bool)
    group = np.where(ok & s, 0, np.where(ok, 1, 2))
    return [int(i) for i in np.lexsort((rows["idx"], group))[:k]]


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


