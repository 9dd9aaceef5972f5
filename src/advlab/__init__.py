"""advlab: adversarial examples in PyTorch — attacks, defenses, detectors, honest evaluation."""
from advlab import (  # noqa: F401  (core layer)
    attacks,  # noqa: F401
    data,
    errors,
    losses,
    threat,
    zoo,
)

__version__ = "0.1.0"
