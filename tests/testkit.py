"""Helpers shared by test modules (plain functions and classes; fixtures live in conftest.py).

Imported as ``testkit`` (tests/ is on pytest's pythonpath).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advlab.attacks.blackbox import Oracle
from advlab.attacks.blackbox.estimate import OracleProbe
from advlab.evaluation.config import RunConfig, config_from_dict


class Counted(nn.Module):
    """Counts the forward passes of a model and the rows it evaluates (``sizes``: the rows
    of each pass since the last :meth:`reset`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    @property
    def calls(self) -> int:
        return len(self.sizes)

    @property
    def rows(self) -> int:
        return sum(self.sizes)

    def reset(self) -> None:
        self.sizes.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.model(x)


class Linear(nn.Module):
    """logits = W flat(x) + b in float64: gradients and decision boundaries in closed form."""

    def __init__(self, d: int, k: int, seed: int = 0, bias_scale: float = 1.0,
                 weight_scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(k, d, generator=g, dtype=torch.float64) * weight_scale)
        self.b = nn.Parameter(torch.randn(k, generator=g, dtype=torch.float64) * bias_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def linear_setup(n: int = 4, seed: int = 0):  # noqa: ANN201
    """A two-class Linear model on 1x4x4 images near 0.5: (model, x, y, |margin|, w1 - w0),
    so the minimal L2 perturbation that flips example i is |margin_i| / ||w1 - w0||."""
    model = Linear(16, 2, seed, bias_scale=0.1).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) * 0.2 + 0.4
    with torch.no_grad():
        z = model(x)
        w = model.w[1] - model.w[0]
    return model, x, z.argmax(1), (z[:, 1] - z[:, 0]).abs(), w


def model_state(model: nn.Module) -> dict:
    """Everything about a model that attacks and detectors must leave as it was."""
    return {
        "training": [m.training for m in model.modules()],
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) +
                     len(m._backward_hooks) for m in model.modules()),
    }


def assert_same_state(a: dict, b: dict) -> None:
    """``b`` (after) equals ``a`` (before); ``.grad`` must have stayed None."""
    assert a["training"] == b["training"]
    assert a["requires_grad"] == b["requires_grad"]
    assert all(g is None for g in b["grads"]), ".grad was filled (use torch.autograd.grad)"
    assert all(torch.equal(p, q) for p, q in zip(a["params"], b["params"]))
    assert all(torch.equal(p, q) for p, q in zip(a["buffers"], b["buffers"]))
    assert a["hooks"] == b["hooks"], "hooks left on the model"


# ------------------------------------------------------------ zeroth-order estimates
# (the gradient estimators of NES, Bandits and ZOO against autograd)


class Quadratic(nn.Module):
    """Two logits: z0 = 10 + a.x + x^T Q x / 2 (Q positive definite), z1 = 0; float64. Class
    0 wins on the test images, so the untargeted margin is z0 - z1 and smooth."""

    def __init__(self, d: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(d, generator=g, dtype=torch.float64)
        m = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.1
        self.a = nn.Parameter(a)
        self.q = nn.Parameter(m @ m.T + torch.diag(torch.rand(d, generator=g,
                                                             dtype=torch.float64) + 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1)
        z0 = 10 + v @ self.a + 0.5 * ((v @ self.q) * v).sum(1)
        return torch.stack([z0, torch.zeros_like(z0)], 1)


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) * 0.6 + 0.2


def box_images(n: int = 32) -> torch.Tensor:
    """n float64 1 x 4 x 4 images uniform in the box [0, 1] (seeded)."""
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)


class Floor(nn.Module):
    """floor(4 x) / 4: a preprocessing whose gradient is zero almost everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x * 4) / 4


def interior(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    """n float64 1 x side x side images in [0.4, 0.6], away from the box's faces."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, side, side, generator=g, dtype=torch.float64) * 0.2 + 0.4


def predicted(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's labels of x, so that every attack has work to do."""
    with torch.no_grad():
        return model(x).argmax(1)


class LabelCounter(nn.Module):
    """A fixed linear classifier on 1x8x8 that counts the rows it sees and refuses autograd
    (what a label-only attack may do to its model)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(10, 64, generator=g), requires_grad=True)
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise AssertionError("a black-box attack queried the model with autograd on")
        self.rows += len(x)
        return x.flatten(1) @ self.w.T

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """The labels of x, without counting these rows."""
        with torch.no_grad():
            out = self(x).argmax(1)
        self.rows = 0
        return out


def activations(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The Tiny model's (conftest.Tiny) ``conv`` activations and ``fc`` logits at x."""
    with torch.no_grad():
        return {"conv": model.conv(x), "fc": model(x)}


def true_grad(objective, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(model(xr), y, None).sum(), xr)
    return g


def session(model: nn.Module | Oracle, n: int, seed: int = 0) -> OracleProbe:
    """The probe an estimator prepares for a batch of n (an unlimited oracle by default)."""
    oracle = model if isinstance(model, Oracle) else Oracle(model)
    oracle.reset(n)
    return OracleProbe(oracle, torch.Generator().manual_seed(seed))


def estimate(atk, probe: OracleProbe, x: torch.Tensor, y: torch.Tensor):  # noqa: ANN001, ANN201
    """The attack's estimated gradient (and scores) at x, as its loop gets it."""
    return atk.source(atk.objective, probe, x, y, None, None)


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def scale(est: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Projection of the estimate on the true gradient, in units of the true gradient."""
    return (est * true).flatten(1).sum(1) / true.flatten(1).pow(2).sum(1)


# ----------------------------------------------------------------------------- evaluation

BITDEPTH = {"name": "transformed", "params": {"transforms": [{"name": "BitDepth", "bits": 1}]}}


def tiny_config(**over) -> RunConfig:  # noqa: ANN003
    """A small run of two Tiny models 'a' and 'b' on 24 images; ``over`` replaces keys."""
    d = {"name": "t", "batch_size": 24, "models": ["a", "b"], "data": {"name": "x", "n": 24},
         "attacks": [{"name": "fgsm", "eps": [0.02, 0.1]},
                     {"name": "pgd", "eps": 0.05, "params": {"steps": 5}}],
         "report": {"gallery": 3}, "sanity": {"enabled": False}}
    d.update(over)
    return config_from_dict(d)


def tiny_setup(make_tiny, n: int = 24):  # noqa: ANN001, ANN201
    """Two seeded Tiny models; labels = model a's predictions (clean accuracy 100% on a)."""
    a, b = make_tiny(0), make_tiny(1)
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = a(x).argmax(1)
    return {"a": a, "b": b}, (x, y)
