"""Defenses, each shipped with the adaptive attack that tests it honestly.

- :mod:`~advlab.defenses.training`: adversarial training (the lecture's loop, Madry PGD
  training, TRADES, fast FGSM training).
- :mod:`~advlab.defenses.transforms`: input-transformation defenses (:class:`Transformed`),
  with BPDA + EOT as their adaptive attack; the transformations themselves come from
  :mod:`advlab.transforms` and are re-exported here.
"""
from advlab.defenses.training import (  # noqa: F401
    FitSettings,
    TrainingProgress,
    adversarial_training,
    fast_training,
    lecture_training,
    madry_training,
    trades_training,
)
from advlab.defenses.transforms import Adaptive, Transformed  # noqa: F401
from advlab.transforms import (  # noqa: F401
    BPDA,
    JPEG,
    BitDepth,
    Brightness,
    Compose,
    GaussianBlur,
    GaussianNoise,
    MedianSmoothing,
    Mirror,
    RandomChoice,
    Rotate,
    Scale,
    Shear,
    Transform,
    Translate,
    distribution,
)
