"""advlab: adversarial examples in PyTorch — attacks, defenses, detectors, honest evaluation."""
from advlab import errors, threat, losses  # noqa: F401  (core layer)
from advlab import data, zoo  # noqa: F401
from advlab import attacks  # noqa: F401

__version__ = "0.1.0"
