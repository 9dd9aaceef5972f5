"""Defenses, each shipped with the adaptive attack that tests it honestly.

- :mod:`~advlab.defenses.training`: adversarial training (the lecture's loop, Madry PGD
  training, TRADES, fast FGSM training).
- :mod:`~advlab.defenses.distillation`: defensive distillation (:func:`distill`); its
  adaptive attack is C&W on the logits.
- :mod:`~advlab.defenses.transformed`: input-transformation defenses (:class:`Transformed`),
  with BPDA + EOT as their adaptive attack; the transformations themselves come from
  :mod:`advlab.transforms` and are re-exported here.
- :mod:`~advlab.defenses.pixeldefend`: PixelDefend (a small PixelCNN and the greedy
  purification), attacked adaptively with BPDA.

MagNet lives in :mod:`advlab.defenses.magnet`. By name (what ``advlab run`` uses):
``advlab.defenses.get("distillation", temperature=100)`` builds a recipe
(:mod:`~advlab.defenses.registry`), ``available()`` lists them.
"""
from advlab.defenses.distillation import Distilled, distill, soft_labels  # noqa: F401
from advlab.defenses.magnet import AutoEncoder, MagNet, Reformer, train_autoencoder  # noqa: F401
from advlab.defenses.pixeldefend import (  # noqa: F401
    PixelCNN,
    PixelDefend,
    Purifier,
    purify,
    train_pixelcnn,
)
from advlab.defenses.registry import available, get, register  # noqa: F401
from advlab.defenses.training import (  # noqa: F401
    ROBUST,
    FitSettings,
    TrainingProgress,
    adversarial_training,
    fast_training,
    lecture_training,
    load_robust,
    madry_training,
    trades_training,
)
from advlab.defenses.transformed import Adaptive, Transformed  # noqa: F401
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
