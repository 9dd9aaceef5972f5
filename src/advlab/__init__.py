"""advlab: adversarial examples in PyTorch — attacks, defenses, detectors, honest evaluation.

The layers, bottom to top: errors/threat/losses/validation -> data, zoo, models, transforms ->
attacks -> defenses, detectors -> evaluation -> report, cli (imported on demand).
"""
# ruff: noqa: I001, F401, E402
import os

# Idle OpenMP threads spin by default; advlab's loops of small tensor operations then run
# many times slower on a machine whose cores are busy (seen on a shared 2-core machine).
# Passive waiting costs little when the machine is idle. Only takes effect if torch is not
# imported yet, and never overrides the user's own setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from advlab import errors


def _check_torch_numpy() -> None:
    """torch wheels built against numpy 1 (torch 2.2, for one) import beside numpy 2 with only
    a warning and then fail on the first array they exchange: say so once, at import."""
    import numpy
    import torch
    try:
        torch.zeros(1).numpy()
    except RuntimeError as e:
        raise errors.EnvironmentMismatchError(
            f"torch {torch.__version__} cannot exchange arrays with numpy {numpy.__version__} "
            "(its wheel was built against numpy 1): pip install 'numpy<2', or a newer torch"
        ) from e


_check_torch_numpy()

from advlab import validation, threat, losses
from advlab import data
from advlab import zoo
from advlab import models
from advlab import transforms
from advlab import attacks
from advlab import defenses  # noqa: F401
from advlab import detectors

__version__ = "0.1.0"
