"""advlab.io: atomic writes, fingerprints, checkpoints and the model cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from advlab import io
from advlab.errors import ModelFileError


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_atomic_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "sub" / "out.json"
    io.atomic_write(p, "old")
    assert p.read_text() == "old"
    assert oct(p.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old"                           # never a torn file
    assert sorted(f.name for f in p.parent.iterdir()) == ["out.json"]   # no temp left
    io.atomic_write(p, b"new")
    assert p.read_bytes() == b"new"


def test_fingerprints() -> None:
    a = nn.Linear(3, 2)
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert io.fingerprint_model(a) == io.fingerprint_model(b)
    with torch.no_grad():
        b.bias[0] += 1e-7
    assert io.fingerprint_model(a) != io.fingerprint_model(b)
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert io.fingerprint_data(x, y) == io.fingerprint_data(x.clone(), y.clone())
    assert io.fingerprint_data(x, y) != io.fingerprint_data(x, y.flip(0))
    assert io.fingerprint_data(x, y) != io.fingerprint_data(x.double(), y)


def test_architecture_fingerprint_reads_names_and_shapes_only() -> None:
    def net(width: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), nn.Flatten(),
                             nn.Linear(4 * width, 3))

    torch.manual_seed(0)
    a, b = net(2), net(2)
    assert io.fingerprint_model(a) != io.fingerprint_model(b)
    assert io.fingerprint_architecture(a) == io.fingerprint_architecture(b)
    assert io.fingerprint_architecture(a) != io.fingerprint_architecture(net(3))
    # the digest of checkpoints written by madry_training & co. before this function existed
    # (their identity "data" is fingerprint_data(x, y) + ":" + this): resumed, not retrained
    assert io.fingerprint_architecture(a) == "ec21150b5f871b28"
    x, y = torch.arange(12.0).view(3, 1, 2, 2) / 12, torch.tensor([0, 2, 1])
    assert io.fingerprint_data(x, y) == "a509de6f05875e78"


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    t = {"w": torch.arange(6.0).view(2, 3), "rng": torch.Generator().get_state()}
    io.write_checkpoint(tmp_path / "c.safetensors", t, {"epoch": 3, "name": "x"})
    back, state = io.read_checkpoint(tmp_path / "c.safetensors")
    assert state == {"epoch": 3, "name": "x"} and back.keys() == t.keys()
    assert all(torch.equal(back[k], t[k]) for k in t)
    assert (tmp_path / "c.json").is_file()
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="checkpoint"):
        io.read_checkpoint(tmp_path / "bad.safetensors")


def test_cached_model_trains_once_and_checks_its_key(tmp_path: Path) -> None:
    path = tmp_path / "models" / "m.safetensors"
    calls = []

    def train() -> tuple[nn.Module, dict]:
        calls.append(1)
        m = nn.Linear(2, 2)
        with torch.no_grad():
            m.weight.fill_(len(calls))
        return m, {"accuracy": 0.5}

    with pytest.raises(ModelFileError, match="not cached"):
        io.cached_model(path, {"v": 1}, lambda: nn.Linear(2, 2), train, train_if_missing=False)
    first = io.cached_model(path, {"v": 1}, lambda: nn.Linear(2, 2), train)
    again = io.cached_model(path, {"v": 1}, lambda: nn.Linear(2, 2), train)
    assert len(calls) == 1 and torch.equal(first.weight, again.weight)
    assert io.read_metadata(path) == {"v": 1, "accuracy": 0.5}
    with pytest.raises(ModelFileError, match="expected"):  # another key: never served stale
        io.cached_model(path, {"v": 2}, lambda: nn.Linear(2, 2), train, train_if_missing=False)
    retrained = io.cached_model(path, {"v": 2}, lambda: nn.Linear(2, 2), train)
    assert len(calls) == 2 and (retrained.weight == 2).all() and not retrained.training
