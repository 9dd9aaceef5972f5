"""A user's own project, as a test writes it from scratch: the example network of
``examples/own_model`` (a 3 x 32 x 32 net in a .py file), trained here on the example's colour
images and saved as safetensors, and its test images as a folder of PNGs, CIFAR-10 binary
batches and an .npz file. Imported as ``userkit`` (tests/ is on pytest's pythonpath).
"""
from __future__ import annotations

import runpy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_model"
NET = EXAMPLE / "my_net.py"


@dataclass
class Project:
    """Where the files are: ``net`` (.py), ``weights``, and the data in three formats."""

    root: Path
    net: Path
    weights: Path
    folder: Path
    cifar: Path
    npz: Path
    classes: tuple[str, ...]


def make(root: Path, n_train: int = 600, n_test: int = 60, epochs: int = 3) -> Project:
    """Train the example net (seeded, the global RNG restored) and write everything."""
    ex = runpy.run_path(str(EXAMPLE / "prepare.py"))
    build = runpy.run_path(str(NET))["build"]
    x_train, y_train = ex["make_images"](n_train, seed=0)
    x_test, y_test = ex["make_images"](n_test, seed=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = ex["train"](build(), x_train, y_train, epochs=epochs)
    weights = root / "my_net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    folder = root / "pngs"
    ex["write_folder"](folder, x_train[:100], y_train[:100], "train")
    ex["write_folder"](folder, x_test, y_test, "test")
    cifar = root / "cifar"
    cifar.mkdir()
    write_cifar(cifar / "test_batch.bin", x_test, y_test)
    for i in range(1, 6):
        part = slice((i - 1) * 20, i * 20)
        write_cifar(cifar / f"data_batch_{i}.bin", x_train[part], y_train[part])
    npz = root / "images.npz"
    x_all, y_all = ex["make_images"](100, seed=2)  # split 80 / 20 per class by advlab
    np.savez(npz, x=x_all, y=y_all, classes=np.array(ex["CLASSES"]))  # N x H x W x C, uint8
    return Project(root, NET, weights, folder, cifar, npz, tuple(ex["CLASSES"]))


def write_cifar(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """CIFAR-10's binary format: per image one label byte, then R, G, B planes of 32 x 32."""
    planes = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    path.write_bytes(np.concatenate([y.astype(np.uint8)[:, None], planes], 1).tobytes())


def config(p: Project, data: str, name: str, n: int = 20) -> str:
    """A small run of the user's model on ``data``: FGSM and PGD at two eps."""
    return f"""
name = "{name}"
batch_size = 20
workers = 1

[data]
name = "{data}"
n = {n}
fit_n = 50

[[models]]
name = "my-net"
factory = "{p.net}:build"
kwargs = {{ num_classes = 10 }}
weights = "{p.weights}"

[[attacks]]
name = "fgsm"
eps = [0.03, 0.3]

[[attacks]]
name = "pgd"
eps = [0.03, 0.3]
params = {{ steps = 5 }}

[sanity]
enabled = false

[report]
eps = 0.03
"""


class Payload:
    """Unpickling this would create ``marker`` (a weights file must never run it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))
