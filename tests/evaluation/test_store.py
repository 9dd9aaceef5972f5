"""The results database and atomic writes."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from advlab.errors import DataError
from advlab.evaluation.store import CellRecord, Store, canonical_json, cell_key


def record(key: str = "k1", n: int = 3, fail_at: int | None = None) -> CellRecord:
    rng = np.random.default_rng(0)
    ex = {"idx": np.arange(n), "label": np.arange(n) % 10, "clean_pred": np.arange(n) % 10,
          "clean_conf": rng.random(n), "adv_pred": (np.arange(n) + 1) % 10,
          "adv_conf": rng.random(n), "target": np.full(n, None),
          "success": np.ones(n, bool), "l0": rng.random(n), "l1": rng.random(n),
          "l2": rng.random(n), "linf": rng.random(n), "ssim": np.full(n, np.nan),
          "queries": np.arange(n) * 7}
    if fail_at is not None:
        ex["clean_pred"] = ex["clean_pred"].astype(object)
        ex["clean_pred"][fail_at] = None   # NOT NULL column: the insert fails mid-cell
    spec = {"model": {"name": "m"}, "defense": {"name": "none"}, "attack": "fgsm",
            "params": {"eps": 0.1}, "seed": 0}
    return CellRecord(
        key=key, spec=spec, examples=ex,
        probes={"shift:1": {"clean_pred": ex["label"], "clean_conf": ex["clean_conf"],
                            "adv_pred": ex["label"], "adv_conf": ex["adv_conf"]}},
        scores={"det": {"clean": rng.random(n), "adv": rng.random(n) + 1}},
        gallery=[(1, rng.random((1, 4, 5)).astype(np.float32),
                  rng.random((1, 4, 5)).astype(np.float32))],
        started=1.0, finished=2.0, wall_s=1.0, info={"attack": "FGSM()"})


def test_roundtrip(tmp_path: Path) -> None:
    rec = record()
    with Store(tmp_path / "db.sqlite") as s:
        s.write_cell(rec)
        assert s.finished(["k1", "k2"]) == {"k1"}
        ex = s.examples("k1")
        for c in ("label", "clean_pred", "adv_pred", "success"):
            assert np.array_equal(ex[c], rec.examples[c])
        for c in ("clean_conf", "adv_conf", "l0", "l1", "l2", "linf"):
            assert np.allclose(ex[c], rec.examples[c])
        assert np.isnan(ex["ssim"]).all() and (ex["target"] == -1).all()
        assert np.array_equal(ex["queries"], [0, 7, 14])
        assert np.allclose(s.scores("k1")["det"]["adv"], rec.scores["det"]["adv"])
        assert np.array_equal(s.probes("k1")["shift:1"]["adv_pred"], rec.examples["label"])
        (idx, x, xa), = s.gallery("k1")
        assert idx == 1 and np.array_equal(x, rec.gallery[0][1])
        assert np.array_equal(xa, rec.gallery[0][2])
        assert s.cell("k1")["info"] == {"attack": "FGSM()"} and s.cell("nope") is None
    assert sqlite3.connect(tmp_path / "db.sqlite").execute(
        "PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_cell_leaves_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "db.sqlite") as s:
        s.write_cell(record("good"))
        with pytest.raises(sqlite3.IntegrityError):
            s.write_cell(record("bad", n=5, fail_at=3))
        assert s.finished(["good", "bad"]) == {"good"}
        assert len(s.examples("bad")["idx"]) == 0 and s.scores("bad") == {}
        assert s.gallery("bad") == [] and s.probes("bad") == {}


def test_rewrite_replaces(tmp_path: Path) -> None:
    with Store(tmp_path / "db.sqlite") as s:
        s.write_cell(record(n=5))
        s.write_cell(record(n=2))
        assert len(s.examples("k1")["idx"]) == 2 and len(s.scores("k1")["det"]["clean"]) == 2


def test_runs(tmp_path: Path) -> None:
    with Store(tmp_path / "db.sqlite") as s:
        s.begin_run("r", {"a": 1}, {"seed": 0}, [("k2", {"x": 2}), ("k1", {"x": 1})])
        s.end_run("r", 3.5)
        r = s.run("r")
        assert r["cells"] == [("k2", {"x": 2}), ("k1", {"x": 1})] and r["wall_s"] == 3.5
        s.begin_run("r", {"a": 2}, {}, [("k3", {})])   # a rerun replaces the cell list
        assert s.run("r")["cells"] == [("k3", {})] and s.runs() == ["r"]
        with pytest.raises(DataError, match="no run named 'x'"):
            s.run("x")


def test_bad_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DataError, match="not a usable"):
        Store(junk)
    db = tmp_path / "db.sqlite"
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value='99' WHERE name='schema'")
    con.commit()
    con.close()
    with pytest.raises(DataError, match="schema 99"):
        Store(db)


def test_cell_key_canonical() -> None:
    a = {"attack": "pgd", "params": {"eps": 0.1, "steps": 40}}
    b = {"params": {"steps": 40, "eps": 0.1}, "attack": "pgd"}
    assert cell_key(a) == cell_key(b)
    assert cell_key(a) != cell_key({**a, "params": {"eps": 0.1, "steps": 41}})
    assert canonical_json(b) == '{"attack":"pgd","params":{"eps":0.1,"steps":40}}'
    with pytest.raises(DataError):
        canonical_json({"eps": float("nan")})
