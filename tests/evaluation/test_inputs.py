"""advlab.evaluation.inputs: the run's models, data and device, checked before any cell."""
from __future__ import annotations

import pytest
import torch

from advlab.errors import (
    ConfigError,
)
from advlab.evaluation.inputs import resolve_device


def test_device_names() -> None:
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:1")
