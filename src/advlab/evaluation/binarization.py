r"""The binarization test: does the attack find an adversarial example known to exist?

Zimmermann, Brendel, Tramer & Carlini's active test of an evaluation. For each clean example
x the model's features :math:`\phi` (the input of its last linear layer, else its logits)
get a new linear readout that separates

- *inner* points, labelled 0: x and points drawn uniformly from the ball of radius
  :math:`\eta \epsilon` around it (:math:`\eta = 0.95`), from
- one *boundary* point, labelled 1: a random point of the ball pushed to Linf distance
  exactly :math:`\epsilon` (clipped to [0, 1]).

When the readout classifies every one of them correctly (else the example is skipped), the
binary classifier :math:`g(x') = w^\top \phi(x') + b` has an adversarial example for x in the
eps-ball: the boundary point. The attack under test is run on g from x with label 0; it
*passes* on that example if it finds any point of class 1 within eps. An attack that fails
on a share of the examples is too weak for this model (masked gradients, too few steps, a
bad step size), whatever robust accuracy it reports.

References:
    Zimmermann, Brendel, Tramer & Carlini, "Increasing confidence in adversarial robustness
    evaluations", NeurIPS 2022, arXiv:2206.13991 (Section 3, the binarization test).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab.errors import InputError
from advlab.threat import clip_box
from advlab.validation import check_images, check_labels

log = logging.getLogger(__name__)

AttackFn = Callable[[nn.Module, Tensor, Tensor, float], Tensor]


@dataclass
class BinarizationResult:
    """The test's outcome.

    Attributes:
        tested: examples whose readout was valid (the adversarial example exists).
        passed: of those, the examples where the attack found a class-1 point within eps.
        skipped: examples whose readout could not separate the points.
        passed_mask: (n,) bool over the examples, False where skipped or failed.
    """

    tested: int
    passed: int
    skipped: int
    passed_mask: Tensor

    @property
    def pass_rate(self) -> float:
        """Share of the tested examples where the attack found the known example."""
        return self.passed / self.tested if self.tested else float("nan")


class Readout(nn.Module):
    """Binary logits [0, w . phi(x) + b] on the model's features (in x's dtype; the readout
    itself is computed in float64)."""

    def __init__(self, features: Callable[[Tensor], Tensor], w: Tensor, b: Tensor) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("w", w)
        self.register_buffer("b", b)
        self.train(False)

    def forward(self, x: Tensor) -> Tensor:
        s = (self.features(x) @ self.w + self.b).to(x.dtype)
        return torch.stack([torch.zeros_like(s), s], 1)


def feature_map(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """phi: the input of the model's last nn.Linear (flattened) when it has one, else its
    output."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return lambda x: model(x).flatten(1)
    last = linears[-1]

    def phi(x: Tensor) -> Tensor:
        got: list[Tensor] = []
        h = last.register_forward_pre_hook(lambda m, a: got.append(a[0]))
        try:
            model(x)
        finally:
            h.remove()
        return got[-1].flatten(1)
    return phi


def _points(x: Tensor, eps: float, n_inner: int, eta: float, g: torch.Generator
            ) -> tuple[Tensor, Tensor]:
    """(inner points with x first, the boundary point) around one image x (1 x C x H x W)."""
    u = torch.rand((n_inner - 1, *x.shape[1:]), generator=g, device=x.device, dtype=x.dtype)
    inner = torch.cat([x, clip_box(x + (2 * u - 1) * eta * eps)])
    d = 2 * torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) - 1
    d = d / d.abs().amax().clamp_min(1e-12) * eps  # Linf norm exactly eps
    bnd = clip_box(x + d)
    # pixels clipped at the box lose distance: push the largest free coordinate to eps
    if (bnd - x).abs().amax() < eps * (1 - 1e-6):
        room = torch.maximum(1 - x, x)
        i = room.flatten().argmax()
        flat = bnd.flatten().clone()
        flat[i] = x.flatten()[i] + eps if 1 - x.flatten()[i] >= eps else x.flatten()[i] - eps
        bnd = flat.view_as(x)
    return inner, bnd


def _fit(fi: Tensor, fb: Tensor, steps: int = 300) -> tuple[Tensor, Tensor, bool]:
    """A logistic readout separating inner features ``fi`` (0) from ``fb`` (1), balanced;
    returns (w, b, valid: every point on its side)."""
    mu, sd = fi.mean(0), fi.std(0).clamp_min(1e-6)
    zi, zb = (fi - mu) / sd, (fb - mu) / sd
    w = (zb.mean(0) - zi.mean(0)).clone().requires_grad_(True)
    b = torch.zeros((), dtype=fi.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        li = nn.functional.softplus(zi @ w + b).mean()
        lb = nn.functional.softplus(-(zb @ w + b)).mean()
        loss = li + lb + 1e-4 * (w * w).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    w_, b_ = (w / sd).detach(), (b - (w * mu / sd).sum()).detach()
    valid = bool(((fi @ w_ + b_) < 0).all() and ((fb @ w_ + b_) > 0).all())
    return w_, b_, valid


def binarization_test(model: nn.Module, x: Tensor, y: Tensor, attack: AttackFn, eps: float,
                      *, n_inner: int = 200, eta: float = 0.95, seed: int = 0,
                      features: Callable[[Tensor], Tensor] | None = None
                      ) -> BinarizationResult:
    """Run the binarization test of ``attack`` on ``model`` for each example of x.

    Args:
        model: a deterministic model, x in [0, 1] -> logits, eval mode (not modified).
        x, y: clean images and labels; the examples the model misclassifies are skipped.
        attack: ``attack(binary_model, x_i, zeros, eps) -> x_adv`` (one image at a time),
            e.g. ``lambda m, x, y, e: advlab.attacks.PGD(eps=e)(m, x, y).x_adv``.
        eps: the Linf radius.
        n_inner: inner points per example (x included).
        eta: inner points lie within eta * eps.
        seed: seeds the sampled points.
        features: phi (default :func:`feature_map`).

    Returns:
        A :class:`BinarizationResult`.
    """
    check_images(x)
    check_labels(y, len(x))
    if eps <= 0 or n_inner < 2 or not 0 < eta < 1:
        raise InputError(f"need eps > 0, n_inner >= 2, 0 < eta < 1; got {eps}, {n_inner}, "
                         f"{eta}")
    phi = features or feature_map(model)
    g = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        right = model(x).argmax(1) == y
    passed = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    tested = 0
    for i in right.nonzero().flatten().tolist():
        xi = x[i:i + 1].detach()
        inner, bnd = _points(xi, eps, n_inner, eta, g)
        with torch.no_grad():
            fi, fb = phi(inner).double(), phi(bnd).double()
        w, b, valid = _fit(fi, fb)
        if not valid:
            continue
        tested += 1
        head = Readout(lambda t: phi(t).double(), w, b)
        zero = torch.zeros(1, dtype=torch.int64, device=x.device)
        x_adv = attack(head, xi, zero, eps)
        inside = (x_adv - xi).abs().amax() <= eps * (1 + 1e-6)
        with torch.no_grad():
            passed[i] = bool(inside) and head(x_adv).argmax(1).item() == 1
    skipped = int(right.sum()) - tested
    log.info("binarization test: %d/%d passed, %d skipped", int(passed.sum()), tested, skipped)
    return BinarizationResult(tested, int(passed.sum()), skipped, passed)
