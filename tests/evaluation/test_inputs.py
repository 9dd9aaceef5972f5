"""advlab.evaluation.inputs: the run's models, data and device, checked before any cell."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import advlab
from advlab.errors import (
    ConfigError,
    UnknownNameError,
)
from advlab.evaluation import inputs
from advlab.evaluation.inputs import resolve_device


def test_device_names() -> None:
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_robust_models_load_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "mnist-cnn-trades" is not a zoo name: the runner asks advlab.defenses for it
    from advlab import defenses, zoo
    from advlab.evaluation.config import ModelSpec

    monkeypatch.setenv("ADVLAB_HOME", str(tmp_path))
    with pytest.raises(advlab.errors.ModelFileError, match="not cached"):
        defenses.load_robust("mnist-cnn-trades", train_if_missing=False)
    cached = zoo.build("mnist-cnn", seed=5).eval()
    zoo.save(cached, tmp_path / "models" / "mnist-cnn-trades.safetensors",
             {"robust": "mnist-cnn-trades",
              "version": defenses.ROBUST["mnist-cnn-trades"]["version"]})
    loaded = inputs.load_model(ModelSpec("mnist-cnn-trades"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 cached.state_dict().values()))
    with pytest.raises(UnknownNameError):
        inputs.load_model(ModelSpec("no-such-model"))
