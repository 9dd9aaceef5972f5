"""The model zoo: architectures, deterministic training, a safe weight cache, ``Normalize``.

``load(name)`` returns an eval-mode model that maps x in [0, 1] (N x C x H x W) to logits
N x K. On first use it trains the model deterministically (seeded initialisation and shuffling,
the global RNG untouched) on its data set's train split and caches the weights as safetensors
under ``$ADVLAB_HOME/models/<name>.safetensors`` (default ``~/.cache/advlab``), written
atomically; a corrupt or mismatching cache file is reported in the log and retrained
(:func:`advlab.io.cached_model`). Models that defenses derive from these (the adversarially
trained ``mnist-cnn-trades``, the distilled ``mnist-mlp-distilled``) are registered here by
their modules (:func:`register`) and load, train and cache the same way.

Models:

- ``mnist-mlp``: the lecture's fully connected network, 784-64-64-10 with ReLU
  (layers ``fc1``, ``relu1``, ``fc2``, ``relu2``, ``fc3``).
- ``mnist-cnn``: a small conv net, conv(1, 32, 3)-ReLU-maxpool-conv(32, 64, 3)-ReLU-maxpool-
  fc(1600, 128)-ReLU-fc(128, 10) (layers ``conv1``, ``conv2``, ``fc1``, ``fc2``).
- ``digits-mlp``: 64-32-10 on scikit-learn's 8 x 8 digits, for very fast tests.

Each starts with ``norm``, a :class:`Normalize` layer, so epsilon stays in pixel space.

Weight files are safetensors; a user's ``.pt`` file is read only through
``torch.load(weights_only=True)``. advlab never unpickles arbitrary objects.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import data, io, optim
from advlab.errors import InputError, LabelError, UnknownNameError

logger = logging.getLogger(__name__)

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
DIGITS_MEAN, DIGITS_STD = 0.3051, 0.3762


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as the model's first layer.

    Keeping normalisation inside the model lets every attack work on x in [0, 1], so
    epsilon is always measured in pixel space.

    Args:
        mean: one value, or one per channel.
        std: one value, or one per channel; all > 0.

    Shape:
        x: N x C x H x W (C matching the number of per-channel values); output likewise.
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if len(mean_t) != len(std_t) and 1 not in (len(mean_t), len(std_t)):
            raise InputError(f"Normalize: {len(mean_t)} means but {len(std_t)} stds")
        if not torch.isfinite(mean_t).all() or not (std_t > 0).all():
            raise InputError(f"Normalize: means must be finite and stds > 0, got "
                             f"mean={mean_t.tolist()} std={std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class MaxPool2x2(nn.MaxPool2d):
    """2 x 2 max pooling with stride 2 (``nn.MaxPool2d(2)``), faster without autograd.

    When no gradient is needed (queries, success checks, detector features), the output is
    the elementwise maximum of the four strided sub-grids: the same values as PyTorch's
    kernel, which makes the zoo CNN's forward slower on CPU (``python benchmarks/kernels.py
    --sections maxpool``, figures in benchmarks/results/kernels-maxpool.json). With
    autograd, PyTorch's kernel runs (its backward is the fastest measured).
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        top = torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2])
        bottom = torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2])
        return torch.maximum(top, bottom)


# ------------------------------------------------------------------ architectures

def mnist_mlp() -> nn.Sequential:
    """The lecture's 2-hidden-layer fully connected network: 784-64-64-10, ReLU."""
    return nn.Sequential(OrderedDict(
        norm=Normalize(MNIST_MEAN, MNIST_STD), flatten=nn.Flatten(),
        fc1=nn.Linear(784, 64), relu1=nn.ReLU(),
        fc2=nn.Linear(64, 64), relu2=nn.ReLU(),
        fc3=nn.Linear(64, 10)))


def mnist_cnn() -> nn.Sequential:
    """A small conv net for 1 x 28 x 28 inputs: two 3 x 3 conv blocks and two linear layers."""
    return nn.Sequential(OrderedDict(
        norm=Normalize(MNIST_MEAN, MNIST_STD),
        conv1=nn.Conv2d(1, 32, 3), relu1=nn.ReLU(), pool1=MaxPool2x2(),   # 32 x 13 x 13
        conv2=nn.Conv2d(32, 64, 3), relu2=nn.ReLU(), pool2=MaxPool2x2(),  # 64 x 5 x 5
        flatten=nn.Flatten(),
        fc1=nn.Linear(64 * 5 * 5, 128), relu3=nn.ReLU(),
        fc2=nn.Linear(128, 10)))


def digits_mlp() -> nn.Sequential:
    """A tiny 64-32-10 ReLU network for scikit-learn's 1 x 8 x 8 digits."""
    return nn.Sequential(OrderedDict(
        norm=Normalize(DIGITS_MEAN, DIGITS_STD), flatten=nn.Flatten(),
        fc1=nn.Linear(64, 32), relu1=nn.ReLU(),
        fc2=nn.Linear(32, 10)))


@dataclass(frozen=True)
class TrainSettings:
    """How a zoo model is trained (stored in its cache file's metadata)."""

    dataset: str
    epochs: int
    lr: float
    batch_size: int
    cosine: bool = True
    seed: int = 0
    weight_decay: float = 0.0


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its builder, training settings and a version (bump it on any change to
    either, so stale cache files are retrained)."""

    build: Callable[[], nn.Module]
    settings: TrainSettings
    version: int
    description: str


_ZOO: dict[str, ZooEntry] = {
    "mnist-mlp": ZooEntry(mnist_mlp, TrainSettings("mnist5k", epochs=20, lr=2e-3, batch_size=64),
                          1, "the lecture's 784-64-64-10 ReLU network"),
    "mnist-cnn": ZooEntry(mnist_cnn, TrainSettings("mnist5k", epochs=8, lr=2e-3, batch_size=64),
                          1, "small CNN: two 3x3 conv blocks, fc 128"),
    "digits-mlp": ZooEntry(digits_mlp, TrainSettings("digits", epochs=10, lr=1e-2, batch_size=64),
                           1, "64-32-10 ReLU network on the 8x8 digits"),
}


def available() -> list[str]:
    """Names that :func:`load` accepts."""
    return list(_ZOO)


def training_settings(name: str) -> TrainSettings:
    """How the zoo architecture ``name`` is trained (its data set, epochs, ...)."""
    return _entry(name).settings


def _entry(name: str) -> ZooEntry:
    if name not in _ZOO:
        raise UnknownNameError("model", name, available())
    return _ZOO[name]


def init_weights(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every Linear and Conv layer in place with PyTorch's default scheme
    (Kaiming-uniform weights with a = sqrt(5), uniform biases in +-1/sqrt(fan_in)), drawing
    only from ``generator``: the global RNG is neither used nor changed.

    Args:
        model: the model (changed in place).
        generator: the source of randomness.

    Returns:
        ``model``.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.weight[0].numel())
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return model


def build(name: str, seed: int = 0) -> nn.Module:
    """An untrained zoo architecture, initialised deterministically from ``seed``.

    Args:
        name: a name from :func:`available`.
        seed: seed of the initialisation.

    Returns:
        The model, in train mode.
    """
    entry = _entry(name)
    with torch.random.fork_rng(devices=[]):  # the layers' own default init draws globally
        model = entry.build()
    return init_weights(model, torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ training and accuracy

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int = 5, lr: float = 1e-3,
          batch_size: int = 64, seed: int = 0, *, weight_decay: float = 0.0,
          cosine: bool = False, loss_fn: LossFn | None = None) -> nn.Module:
    """Train ``model`` in place with Adam on (x, y); deterministic for a given seed.

    The model passed in is changed (train mode while training, parameters updated); it is
    returned in eval mode with every parameter's ``.grad`` reset to None. Copy it first
    (``copy.deepcopy``) to keep the original. Mini-batches are drawn by a random permutation
    per epoch from a ``torch.Generator`` seeded with ``seed``; the global RNG is untouched
    (:func:`advlab.optim.fit`).

    Args:
        model: the model to train (in place).
        x: inputs in [0, 1].
        y: int64 labels, or float soft labels (e.g. a teacher's probabilities) of shape N x K.
        epochs: passes over the data.
        lr: Adam's learning rate.
        batch_size: examples per step.
        seed: seed of the shuffling.
        weight_decay: Adam's L2 penalty.
        cosine: decay the learning rate from ``lr`` to 0 along a cosine over all steps.
        loss_fn: ``loss_fn(model, xb, yb) -> scalar`` to minimise (default: cross-entropy of
            ``model(xb)`` against ``yb``). It may run attacks for adversarial training: it
            is called with the model in train mode and must leave it in train mode.

    Returns:
        ``model``, in eval mode.

    Shape:
        x: N x C x H x W; y: (N,) or N x K.
    """
    n = _check_training_data(x, y)
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise InputError(f"need epochs >= 0, lr > 0, batch_size >= 1; got epochs={epochs}, "
                         f"lr={lr}, batch_size={batch_size}")
    device = _device_of(model, x)
    loss_fn = loss_fn or _cross_entropy

    def batch(s: optim.Step) -> Tensor:
        return loss_fn(model, x[s.idx].to(device), y[s.idx].to(device))

    def report(e: optim.Epoch) -> None:
        logger.info("epoch %d/%d: loss %.4f (%.1f s)", e.epoch, e.epochs, e.loss, e.seconds)

    optim.fit(model, batch, n, epochs=epochs, lr=lr, batch_size=batch_size,
              generator=torch.Generator().manual_seed(seed), weight_decay=weight_decay,
              schedule="cosine" if cosine else "constant", on_epoch=report)
    return model.eval()


def _cross_entropy(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
    return F.cross_entropy(model(xb), yb)


def _check_training_data(x: Tensor, y: Tensor) -> int:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"x must be a non-empty float tensor N x ..., got {what}")
    if not isinstance(y, Tensor) or len(y) != len(x):
        raise LabelError(f"y must be a tensor with {len(x)} rows to match x")
    hard = y.dtype == torch.int64 and y.dim() == 1
    soft = y.is_floating_point() and y.dim() == 2
    if not (hard or soft):
        raise LabelError(f"y must be int64 labels (N,) or float soft labels N x K, got "
                         f"{y.dtype} {tuple(y.shape)}")
    return len(x)


def _device_of(model: nn.Module, x: Tensor) -> torch.device:
    """The device of the model's first parameter or buffer (x's device for a stateless model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return x.device


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of examples whose arg-max logit equals the label (the model's mode is kept).

    Args:
        model: maps x to logits N x K.
        x: inputs; batches are moved to the model's device.
        y: int64 labels.
        batch_size: examples per forward pass.

    Returns:
        The accuracy in [0, 1].

    Shape:
        x: N x C x H x W; y: (N,).
    """
    n = _check_training_data(x, y)
    device = _device_of(model, x)
    correct = 0
    for i in range(0, n, batch_size):
        pred = model(x[i:i + batch_size].to(device)).argmax(1)
        correct += int((pred == y[i:i + batch_size].to(device)).sum())
    return correct / n


def layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (as in ``model.named_modules()``, e.g. ``"fc1"``).

    Raises:
        UnknownNameError: listing the model's layer names.
    """
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise UnknownNameError("layer", name, [k for k in modules if k])
    return modules[name]


# ------------------------------------------------------------------ weight files

#: safetensors weight files, written atomically; a ``.pt`` file read with weights_only
save = io.save_weights
read_metadata = io.read_metadata
load_weights = io.load_weights


# ------------------------------------------------------------------ the cache


@dataclass(frozen=True)
class Derived:
    """A model derived from a zoo model by a defense (adversarial training, distillation),
    trained once on first :func:`load` and cached under its own name like the zoo's own.

    Attributes:
        base: the zoo architecture it has.
        key: the facts its cache file must hold to be reused (name and version; bump the
            version on any change of the recipe).
        train: trains it (returns the model in eval mode and facts for the file's metadata).
        description: one line for people.
    """

    base: str
    key: dict[str, Any]
    train: Callable[[], tuple[nn.Module, dict[str, Any]]]
    description: str


_DERIVED: dict[str, Derived] = {}


def register(name: str, derived: Derived) -> None:
    """Make a derived model loadable by name with :func:`load` (defenses register theirs)."""
    if name in _ZOO:
        raise InputError(f"{name} is a zoo architecture")
    _entry(derived.base)
    _DERIVED[name] = derived


def cache_path(name: str) -> Path:
    """Where the model ``name`` is cached: ``$ADVLAB_HOME/models/<name>.safetensors``."""
    if name not in _DERIVED:
        _entry(name)
    return data.home() / "models" / f"{name}.safetensors"


def load(name: str, *, train_if_missing: bool = True,
         device: str | torch.device | None = None) -> nn.Module:
    """A trained model in eval mode, from the cache or trained now (and cached): a zoo
    architecture, or a registered derived model (see :func:`derived`).

    Args:
        name: a name from :func:`available` or :func:`derived`.
        train_if_missing: train when the cache file is missing or unusable; if False, raise.
        device: where to put the model (default: CPU).

    Returns:
        The model, eval mode, ``.grad`` None everywhere.

    Raises:
        UnknownNameError: an unknown name.
        ModelFileError: no usable cache file and ``train_if_missing=False``.
    """
    if name not in _ZOO and name not in _DERIVED:
        raise UnknownNameError("model", name, available() + derived())
    if name in _DERIVED:
        d = _DERIVED[name]
        model = io.cached_model(cache_path(name), d.key, _ZOO[d.base].build, d.train,
                                train_if_missing=train_if_missing)
    else:
        entry = _entry(name)
        key = {"arch": name, "version": entry.version, "training": asdict(entry.settings)}
        model = io.cached_model(cache_path(name), key, entry.build,
                                lambda: _train(name, entry), train_if_missing=train_if_missing)
    return model.to(device).eval() if device is not None else model.eval()


def derived() -> list[str]:
    """Names of the registered derived models that :func:`load` also accepts."""
    return list(_DERIVED)


def _train(name: str, entry: ZooEntry) -> tuple[nn.Module, dict[str, Any]]:
    s = entry.settings
    logger.info("training zoo model %s on %s (first use; cached at %s)", name, s.dataset,
                cache_path(name))
    x, y = data.load(s.dataset, "train")
    model = build(name, seed=s.seed)
    start = time.perf_counter()
    train(model, x, y, s.epochs, s.lr, s.batch_size, s.seed, weight_decay=s.weight_decay,
          cosine=s.cosine)
    seconds = time.perf_counter() - start
    acc = accuracy(model, *data.load(s.dataset, "test"))
    logger.info("%s: clean test accuracy %.4f after %.1f s of training", name, acc, seconds)
    return model, {"description": entry.description, "clean_accuracy": acc,
                   "train_seconds": round(seconds, 2), "torch": torch.__version__,
                   "threads": torch.get_num_threads()}
