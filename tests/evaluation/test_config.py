"""advlab.evaluation.config: the run's configuration from a dict or a TOML file, and its errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from advlab.errors import (
    ConfigError,
)


def test_config_keys_for_models_data_device_precision(tmp_path: Path) -> None:
    from advlab.evaluation import config_from_dict, load_config

    base = {"models": [{"name": "m", "factory": "net.py:build", "weights": "w.safetensors"}],
            "attacks": ["fgsm"]}
    cfg = config_from_dict({**base, "batch_size": "auto", "device": "cuda:1",
                            "precision": "bf16", "data": {"name": "npz:d.npz", "resize": 32,
                                                          "channels": 3, "subset": "random"}})
    assert (cfg.batch_size, cfg.device, cfg.precision) == ("auto", "cuda:1", "bf16")
    assert (cfg.data.resize, cfg.data.channels, cfg.data.subset) == ((32, 32), 3, "random")
    assert cfg.to_dict()["precision"] == "bf16"
    for bad, match in [({"batch_size": 0}, "batch_size"), ({"device": "tpu"}, "device must"),
                       ({"precision": "fp8"}, "precision must"),
                       ({"data": {"channels": 2}}, "channels must be 1 or 3"),
                       ({"data": {"resize": [1, 2, 3]}}, "resize must"),
                       ({"data": {"subset": "best"}}, "subset must")]:
        with pytest.raises(ConfigError, match=match):
            config_from_dict({**base, **bad})
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my.toml").write_text(
        '[data]\nname = "folder:imgs"\n[[models]]\nname = "m"\nfactory = "net.py:build"\n'
        'weights = "w.safetensors"\n[[attacks]]\nname = "fgsm"\n')
    cfg = load_config(tmp_path / "sub" / "my.toml")
    assert cfg.data.name == f"folder:{(tmp_path / 'sub' / 'imgs').resolve()}"
    assert cfg.models[0].factory == f"{(tmp_path / 'sub' / 'net.py').resolve()}:build"
