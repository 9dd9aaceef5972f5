"""What the adaptive-attack ladder (:mod:`advlab.evaluation.ladder`) judges with and
transfers from: the verdict of the real model (a majority of draws for a random one), a
model made attackable when it has no gradient path to its input, and surrogates distilled
from a defended model's own labels (no access to its internals).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advlab import zoo
from advlab.attacks.base import Model

# ----------------------------------------------------------------------------- judging


def judge(model: Model, x_adv: Tensor, y: Tensor, draws: int = 1,
          batch_size: int = 500) -> Tensor:
    """(N,) bool: misclassified in a majority of ``draws`` forward passes (one pass for a
    deterministic model)."""
    wrong = torch.zeros(len(y), dtype=torch.int64, device=y.device)
    with torch.no_grad():
        for _ in range(draws):
            for i in range(0, len(y), batch_size):
                out = model(x_adv[i:i + batch_size])
                wrong[i:i + batch_size] += (out.argmax(1) != y[i:i + batch_size]).long()
    return 2 * wrong > draws


def has_gradient(model: Model, x: Tensor) -> bool:
    """Whether the model's output has a graph back to its input (gradient attacks can run);
    parameters alone (a trainable head after a detached encoding) do not count."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(xg)
        if not out.requires_grad:
            return False
        (g,) = torch.autograd.grad(out.sum(), xg, allow_unused=True)
    return g is not None


def flat(model: Model, x: Tensor, generator: torch.Generator) -> Tensor:
    """(N,) bool: the model's input Jacobian is exactly zero at x (a gradient attack cannot
    move from there), tested by the gradient of a random projection of the output, which is
    zero for every projection only when the Jacobian is (almost surely)."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(xg)
        if not out.requires_grad:
            return torch.ones(len(x), dtype=torch.bool, device=x.device)
        r = torch.randn(out.shape, generator=generator, device=generator.device)
        (g,) = torch.autograd.grad((out * r.to(out)).sum(), xg, allow_unused=True)
    if g is None:
        return torch.ones(len(x), dtype=torch.bool, device=x.device)
    return (g.flatten(1) == 0).all(1)


class Attached(nn.Module):
    """A model whose output has no graph to its input (an argmax head, a lookup), attached
    to it with an exactly zero gradient: gradient attacks then run and see what there is to
    see, a zero gradient, instead of failing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.training = model, model.training

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if not x.requires_grad:
            return out
        return out + 0.0 * x.flatten(1).sum(1, keepdim=True).to(out.dtype)


class LogProbabilities(nn.Module):
    """log of a model that outputs probabilities: logits with the same argmax."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.training = model, model.training

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).clamp_min(1e-30).log()


class Ensemble(nn.Module):
    """The mean log-softmax of several models (a transfer attack's common target)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x).log_softmax(1) for m in self.members]).mean(0)


# ----------------------------------------------------------------------------- surrogates


def surrogate_net(shape: Sequence[int], classes: int, seed: int = 0) -> nn.Module:
    """A small differentiable network for images of ``shape`` (C, H, W): two conv blocks
    and two linear layers (a plain MLP for images under 8 pixels a side)."""
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    if min(h, w) < 8:
        net: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 128), nn.ReLU(),
                                       nn.Linear(128, classes))
    else:
        side = lambda s: ((s - 2) // 2 - 2) // 2  # noqa: E731  (two conv3 + pool2 blocks)
        net = nn.Sequential(nn.Conv2d(c, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(64 * side(h) * side(w), 128), nn.ReLU(),
                            nn.Linear(128, classes))
    return zoo.init_weights(net, g)


def distill(model: Model, x_train: Tensor, *, eps: float = 0.3, epochs: int = 4,
            seed: int = 0, batch_size: int = 500) -> nn.Module:
    """A surrogate trained on the model's own top-1 labels (label-only access): on the
    training images and on a copy of them with uniform noise in the eps-ball (the region an
    attack explores).

    Args:
        model: the model to imitate (queried without gradients).
        x_train: training images in [0, 1], N x C x H x W.
        eps: the noise radius of the augmented copy.
        epochs: training passes (Adam, :func:`advlab.zoo.train`).

    Returns:
        The surrogate, eval mode, on x_train's device.

    References: Papernot et al., "Practical black-box attacks against machine learning",
    ASIA CCS 2017, arXiv:1602.02697 (a substitute trained on the oracle's labels).
    """
    g = torch.Generator(device=x_train.device).manual_seed(seed)
    noise = (torch.rand(x_train.shape, generator=g, device=x_train.device) * 2 - 1) * eps
    xs = torch.cat([x_train, (x_train + noise).clamp(0, 1)])
    with torch.no_grad():
        labels = torch.cat([model(xs[i:i + batch_size]).argmax(1)
                            for i in range(0, len(xs), batch_size)])
    net = surrogate_net(x_train.shape[1:], int(labels.max().item()) + 1 if len(labels) else 2,
                        seed).to(x_train.device)
    with torch.no_grad():
        k = model(x_train[:2]).shape[1]
    if net[-1].out_features != k:  # the model may use classes its labels never showed
        net = surrogate_net(x_train.shape[1:], k, seed).to(x_train.device)
    return zoo.train(net, xs, labels, epochs=epochs, lr=2e-3, batch_size=128, seed=seed)
