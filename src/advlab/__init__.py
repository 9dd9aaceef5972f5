"""advlab: adversarial examples in PyTorch — attacks, defenses, detectors, honest evaluation.

The layers, bottom to top: errors/threat/losses/validation -> data, zoo, transforms ->
attacks -> defenses, detectors -> evaluation -> report, cli (imported on demand).
"""
# ruff: noqa: I001, F401
from advlab import errors, validation, threat, losses
from advlab import data
from advlab import zoo
from advlab import transforms
from advlab import attacks
from advlab import defenses  # noqa: F401
from advlab import detectors

__version__ = "0.1.0"
