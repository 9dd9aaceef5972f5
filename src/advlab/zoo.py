"""The model zoo: architectures, deterministic training, a safe weight cache, ``Normalize``.

``load(name)`` returns an eval-mode model that maps x in [0, 1] (N x C x H x W) to logits
N x K. On first use it trains the model deterministically (seeded initialisation and shuffling,
the global RNG untouched) on its data set's train split and caches the weights as safetensors
under ``$ADVLAB_HOME/models/<name>.safetensors`` (default ``~/.cache/advlab``), written
atomically; a corrupt or mismatching cache file is reported in the log and retrained.

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

import json
import logging
import math
import os
import pickle
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from advlab import data
from advlab.errors import InputError, LabelError, ModelFileError, UnknownNameError

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
    kernel, which on CPU is 1.9x slower for the zoo CNN's forward (batch 100 to 500). With
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
    per epoch from a ``torch.Generator`` seeded with ``seed``; the global RNG is untouched.

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
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(n / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)) if cosine else 1.0)
    model.train()
    for epoch in range(epochs):
        start, total = time.perf_counter(), 0.0
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            loss = loss_fn(model, x[idx].to(device), y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        logger.info("epoch %d/%d: loss %.4f (%.1f s)", epoch + 1, epochs, total / n,
                    time.perf_counter() - start)
    optimizer.zero_grad(set_to_none=True)
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

def save(model: nn.Module, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the model's state dict as safetensors, atomically (temporary file + rename).

    Args:
        model: the model whose parameters and buffers are saved.
        path: the target file (its directory is created).
        metadata: JSON-serialisable facts stored in the file's header
            (read back with :func:`read_metadata`).

    Returns:
        The path written.
    """
    path = Path(path).expanduser()
    try:
        header = {"format": "pt", "advlab": json.dumps(dict(metadata or {}), sort_keys=True)}
    except TypeError as e:
        raise ModelFileError(f"metadata must be JSON-serialisable: {e}") from e
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata dict that :func:`save` stored in a safetensors file ({} if none)."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        return json.loads(header.get("advlab", "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"cannot read the metadata of {path}: {e}") from e


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load weights from a file into ``model`` (in place), never unpickling arbitrary objects.

    A safetensors file is read directly; a ``torch.save`` file (zip archive or pickle) only
    through ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
    containers. A checkpoint dict holding a ``"state_dict"`` entry is accepted.

    Args:
        model: the architecture to fill.
        path: the weight file.
        strict: every key and shape must match.

    Returns:
        ``model``.

    Raises:
        ModelFileError: a missing, corrupt, untrusted or mismatching file.
    """
    path = _existing(path)
    state = _read_state_dict(path)
    if strict:
        _check_fit(model.state_dict(), state, path)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ModelFileError(f"{path} does not fit the model: {e}") from e
    return model


def _check_fit(own: Mapping[str, Tensor], state: Mapping[str, Tensor], path: Path) -> None:
    """Every key of the model in the file and back, with equal shapes; the message names
    the first mismatch."""
    def more(names: list[str]) -> str:
        return f" (and {len(names) - 1} more)" if len(names) > 1 else ""

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        head = (f"the model's {missing[0]!r} is not in the file{more(missing)}" if missing
                else f"the file's {unexpected[0]!r} is not in the model{more(unexpected)}")
        raise ModelFileError(f"{path} does not fit the model: {head}; the model has "
                             f"{len(own)} tensors, the file {len(state)}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelFileError(f"{path} does not fit the model: {k!r} has shape "
                                 f"{tuple(state[k].shape)} in the file but {tuple(v.shape)} "
                                 f"in the model")


def _existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise ModelFileError(f"model file {path} is {what}; give a weights file")
    return path


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ModelFileError(f"{path} is a corrupt safetensors file: {e}") from e
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save zip archive, or pickle
        kind = "a zip archive" if head[:1] == b"P" else "a pickle"
        if path.suffix == ".safetensors":  # torch.load would read it as safetensors
            raise ModelFileError(
                f"{path} is named .safetensors but holds {kind} (what torch.save writes), not "
                f"safetensors; rename it to .pt, or re-save the state dict with advlab.zoo.save")
        try:
            with open(path, "rb") as f:
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as e:
            raise ModelFileError(
                f"refused to load {path}: torch.load(weights_only=True) rejected it (it holds "
                f"more than tensors, or is corrupt). advlab never unpickles arbitrary objects; "
                f"re-save the state dict with advlab.zoo.save (safetensors)") from e
        return _as_state_dict(obj, path)
    raise ModelFileError(f"{path} is neither a safetensors file nor a torch.save weights file")


def _as_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise ModelFileError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


# ------------------------------------------------------------------ the cache

def cache_path(name: str) -> Path:
    """Where the zoo model ``name`` is cached: ``$ADVLAB_HOME/models/<name>.safetensors``."""
    _entry(name)
    return data.home() / "models" / f"{name}.safetensors"


def load(name: str, *, train_if_missing: bool = True,
         device: str | torch.device | None = None) -> nn.Module:
    """A trained zoo model in eval mode, from the cache or trained now (and cached).

    Args:
        name: a name from :func:`available`.
        train_if_missing: train when the cache file is missing or unusable; if False, raise.
        device: where to put the model (default: CPU).

    Returns:
        The model, eval mode, ``.grad`` None everywhere.

    Raises:
        UnknownNameError: an unknown name.
        ModelFileError: no usable cache file and ``train_if_missing=False``.
    """
    entry = _entry(name)
    path = cache_path(name)
    model = None
    if path.exists():
        try:
            model = _load_cached(name, entry, path)
        except ModelFileError as e:
            if not train_if_missing:
                raise
            logger.warning("unusable cache file for %s (%s); retraining", name, e)
    elif not train_if_missing:
        raise ModelFileError(f"zoo model {name} is not cached at {path}; "
                             f"call advlab.zoo.load({name!r}) to train it")
    if model is None:
        model = _train_and_cache(name, entry, path)
    return model.to(device).eval() if device is not None else model.eval()


def _load_cached(name: str, entry: ZooEntry, path: Path) -> nn.Module:
    meta = read_metadata(path)
    if meta.get("arch") != name or meta.get("version") != entry.version:
        raise ModelFileError(f"{path} holds {meta.get('arch')!r} version "
                             f"{meta.get('version')!r}, expected {name!r} version {entry.version}")
    if meta.get("training") != asdict(entry.settings):
        raise ModelFileError(f"{path} was trained with {meta.get('training')}, "
                             f"expected {asdict(entry.settings)}")
    return load_weights(entry.build(), path).eval()


def _train_and_cache(name: str, entry: ZooEntry, path: Path) -> nn.Module:
    s = entry.settings
    logger.info("training zoo model %s on %s (first use; cached at %s)", name, s.dataset, path)
    x, y = data.load(s.dataset, "train")
    model = build(name, seed=s.seed)
    start = time.perf_counter()
    train(model, x, y, s.epochs, s.lr, s.batch_size, s.seed, weight_decay=s.weight_decay,
          cosine=s.cosine)
    seconds = time.perf_counter() - start
    acc = accuracy(model, *data.load(s.dataset, "test"))
    logger.info("%s: clean test accuracy %.4f after %.1f s of training", name, acc, seconds)
    save(model, path, {"arch": name, "version": entry.version, "description": entry.description,
                       "clean_accuracy": acc, "train_seconds": round(seconds, 2),
                       "training": asdict(s), "torch": torch.__version__,
                       "threads": torch.get_num_threads()})
    return model
