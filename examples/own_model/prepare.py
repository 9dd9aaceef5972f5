"""Make the example's data and weights: colour images in a folder of PNGs, a trained net.

    python examples/own_model/prepare.py        # writes data/ and my_net.safetensors here
    advlab run examples/own_model/my.toml       # then evaluate it

Stands in for your own data and training: ten classes of 32 x 32 colour images, each class a
colour of its own under random brightness, a random darker square and pixel noise. The net of
my_net.py is trained for a few epochs with a seeded generator; the weights are saved as
safetensors (advlab never unpickles model files).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
# Class folders sorted by name give the labels (advlab's folder:PATH): keep them in that order.
CLASSES = ("blue", "cyan", "green", "lime", "orange", "pink", "purple", "red", "teal", "yellow")
COLOURS = np.array([[0.15, 0.2, 0.9], [0.2, 0.9, 0.95], [0.1, 0.7, 0.2], [0.6, 0.95, 0.2],
                    [0.95, 0.55, 0.1], [0.95, 0.45, 0.75], [0.55, 0.15, 0.8], [0.9, 0.1, 0.1],
                    [0.1, 0.6, 0.6], [0.9, 0.9, 0.1]], dtype=np.float32)


def make_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images uint8 N x 32 x 32 x 3 and labels 0..9 (class-balanced, shuffled)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % len(CLASSES))
    img = COLOURS[y][:, None, None, :] * rng.uniform(0.6, 1.0, (n, 1, 1, 1))
    img = np.repeat(np.repeat(img, 32, 1), 32, 2)
    for i in range(n):  # a darker square somewhere
        r, c, s = *rng.integers(0, 24, 2), rng.integers(4, 12)
        img[i, r:r + s, c:c + s] *= 0.4
    img = img + rng.normal(0, 0.06, img.shape)
    return (img.clip(0, 1) * 255).round().astype(np.uint8), y.astype(np.int64)


def train(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 4,
          seed: int = 0) -> torch.nn.Module:
    """Adam, batch 64, seeded shuffling; x uint8 N x H x W x 3."""
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    yt = torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def write_folder(root: Path, x: np.ndarray, y: np.ndarray, split: str) -> None:
    """root/split/<class name>/<i>.png"""
    from PIL import Image

    for i, (im, label) in enumerate(zip(x, y)):
        d = root / split / CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i:04d}.png")


def main(out: Path = HERE) -> None:
    sys.path.insert(0, str(HERE))
    from my_net import build

    torch.manual_seed(0)  # the net's initial weights (a script of the user's, not advlab)
    x_train, y_train = make_images(2000, seed=0)
    x_test, y_test = make_images(200, seed=1)
    net = train(build(), x_train, y_train)
    acc = (net(torch.from_numpy(x_test).permute(0, 3, 1, 2).float() / 255).argmax(1)
           == torch.from_numpy(y_test)).float().mean()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(out / "my_net.safetensors"))
    write_folder(out / "data", x_train[:500], y_train[:500], "train")
    write_folder(out / "data", x_test, y_test, "test")
    print(f"test accuracy {acc:.3f}; wrote {out / 'my_net.safetensors'} and {out / 'data'}")


if __name__ == "__main__":
    main()
