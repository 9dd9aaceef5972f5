"""advlab.evaluation.records: a cell's canonical JSON and key, the gallery's pick, the check that
a folder can be written."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from advlab.errors import DataError
from advlab.evaluation import records


def test_canonical_json_is_the_same_text_for_equal_specs() -> None:
    a = {"model": "m", "params": {"steps": 10, "alpha": 0.1}, "eps": 0.3}
    b = {"eps": 0.3, "params": {"alpha": 0.1, "steps": 10}, "model": "m"}
    text = '{"eps":0.3,"model":"m","params":{"alpha":0.1,"steps":10}}'
    assert records.canonical_json(a) == records.canonical_json(b) == text
    assert records.canonical_json({"eps": 0.1 + 0.2}) == '{"eps":0.30000000000000004}'
    for bad in ({"eps": float("nan")}, {"eps": float("inf")}, {"f": object()}):
        with pytest.raises(DataError, match="cannot write a canonical record"):
            records.canonical_json(bad)


def test_cell_key_is_the_hash_of_the_canonical_text() -> None:
    spec = {"model": "m", "eps": 0.3}
    want = hashlib.sha256(b'{"eps":0.3,"model":"m"}').hexdigest()[:24]
    assert records.cell_key(spec) == records.cell_key({"eps": 0.3, "model": "m"}) == want
    assert records.cell_key({**spec, "eps": 0.30000001}) != want


def test_gallery_takes_fooled_then_robust_then_misclassified_in_idx_order() -> None:
    rows = {"idx": np.array([7, 3, 5, 1, 9, 2]),
            "label": np.array([0, 0, 0, 0, 0, 0]),
            "clean_pred": np.array([0, 0, 1, 0, 0, 1]),
            "success": np.array([0, 1, 1, 0, 1, 0])}
    # fooled: idx 3, 9; correct, not fooled: 1, 7; misclassified: 2, 5
    assert records.pick_gallery(rows, 6) == [1, 4, 3, 0, 5, 2]
    assert records.pick_gallery(rows, 3) == [1, 4, 3]


def test_check_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = records.check_writable(tmp_path / "a" / "b", "the run folder")
    assert made == tmp_path / "a" / "b" and made.is_dir() and not list(made.iterdir())
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="cannot write the run folder .*file"):
        records.check_writable(tmp_path / "file" / "runs", "the run folder")
    monkeypatch.setattr(records.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(DataError, match=r"is full \(1 MiB free, advlab needs at least 16 MiB"):
        records.check_writable(tmp_path, "the cache")
