r"""The threat model: L_p balls around the input, intersected with the pixel box [0, 1].

An attack may move an input x anywhere in

.. math::  S(x) = \{ x + r : \|r\|_p \le \epsilon,\ 0 \le x + r \le 1 \}

with ``p`` one of ``linf`` (the lecture's bounded perturbation,
:math:`|r_i| < \epsilon\ \forall i`), ``l2`` or ``l1``. ``eps`` is a float or a per-example
tensor of shape (N,), always in pixel space (normalisation lives inside the model).

Each ball is a small strategy object (after MadryLab's ``attack_steps``): ``norm_of`` measures,
``project`` maps onto the ball, ``steepest`` turns a gradient into the steepest-ascent direction
of unit norm, ``random`` draws a uniform point inside the ball.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from advlab.errors import ThreatModelError

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")


#: the default radius of each norm's ball in pixel space (MNIST-scale images in [0, 1])
DEFAULT_EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}


def broadcast_rows(v: Tensor, like: Tensor) -> Tensor:
    """View a per-example vector (N,) as N x 1 x ... x 1, so it broadcasts against ``like``
    (N x C x H x W): one value per row (eps, a step size, a mask)."""
    return v.view(-1, *([1] * (like.dim() - 1)))




def as_eps(eps: float | Tensor, n: int, like: Tensor) -> Tensor:
    """Validate ``eps`` and return it as a per-example tensor of shape (N,).

    Args:
        eps: a non-negative float, or a tensor of shape () or (N,).
        n: the batch size N.
        like: a tensor whose device and dtype the result takes.

    Raises:
        ThreatModelError: eps negative, NaN/Inf, or of the wrong shape.
    """
    if isinstance(eps, (int, float)):  # one number: checked here, no tensor round trips
        if not math.isfinite(eps):
            raise ThreatModelError("eps must be finite")
        if eps < 0:
            raise ThreatModelError(f"eps must be non-negative, got min {eps:.4g}")
        return torch.full((n,), eps, dtype=like.dtype, device=like.device)
    e = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    if e.dim() == 0:
        e = e.expand(n)
    if e.shape != (n,):
        raise ThreatModelError(
            f"eps must be a float or a tensor of shape ({n},), got {tuple(e.shape)}")
    if not torch.isfinite(e).all():
        raise ThreatModelError("eps must be finite")
    if (e < 0).any():
        raise ThreatModelError(f"eps must be non-negative, got min {e.min().item():.4g}")
    return e.clone()


def lp_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-example norm of a perturbation. ``l0`` counts changed entries (> 1e-7).

    Shape: delta N x ... -> (N,).
    """
    flat = delta.flatten(1)
    return _norm(flat, flat.abs(), norm)


def all_norms(delta: Tensor) -> dict[str, Tensor]:
    """The L0, L1, L2 and Linf norms of each perturbation, as a dict of (N,) tensors."""
    flat = delta.flatten(1)
    mag = flat.abs()  # computed once for the four norms
    return {p: _norm(flat, mag, p) for p in ("l0", "l1", "l2", "linf")}


def _norm(flat: Tensor, mag: Tensor, norm: str) -> Tensor:
    """The norm of each row of ``flat`` (N x D), given ``mag = flat.abs()``."""
    if norm == "linf":
        return mag.amax(1) if flat.shape[1] else flat.new_zeros(len(flat))
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return mag.sum(1)
    if norm == "l0":
        return (mag > 1e-7).sum(1).to(flat.dtype)
    raise ThreatModelError(f"unknown norm {norm!r}; available: l0, l1, l2, linf")


def clip(x: Tensor, lo: float | Tensor | None = None,
         hi: float | Tensor | None = None) -> Tensor:
    r"""Clip x to [lo, hi] with one gradient convention on every torch version.

    .. math::  \frac{\partial\, \mathrm{clip}(x)}{\partial x} =
       \begin{cases} 1 & lo \le x \le hi \\ 0 & \text{otherwise} \end{cases}

    The boundary belongs to the interval, so a pixel that sits exactly at 0 or 1 (most of an
    MNIST image) still receives the loss gradient and a step can move it inward. torch's own
    ``clamp`` gives 1 there up to 2.13 and 0 from 2.14 (0.5 with tensor bounds), which froze
    those pixels in every optimisation through :math:`\mathrm{clip}(x + \delta)` at
    :math:`\delta = 0`. Every clip that a gradient passes through in advlab is this one.

    Args:
        x: any tensor.
        lo, hi: bounds (numbers or tensors broadcasting against x); None for no bound.
    """
    out = x.clamp(lo, hi)
    if not (x.requires_grad and torch.is_grad_enabled()):
        return out
    return torch.where(out == x, x, out.detach())  # inside or on the boundary: identity


def clip_box(x_adv: Tensor) -> Tensor:
    """Clip to the pixel box [0, 1], with :func:`clip`'s gradient."""
    return clip(x_adv, 0.0, 1.0)


class Ball:
    """An L_p ball of per-example radius eps: {r : ||r||_p <= eps}."""

    norm: str = ""

    def norm_of(self, delta: Tensor) -> Tensor:
        """Per-example norm, (N,)."""
        return lp_norm(delta, self.norm)

    def project(self, delta: Tensor, eps: Tensor) -> Tensor:
        """Euclidean projection of each delta onto its ball."""
        raise NotImplementedError

    def steepest(self, grad: Tensor) -> Tensor:
        """The unit-norm direction d maximising <grad, d> (the normalised step)."""
        raise NotImplementedError

    def random(self, like: Tensor, eps: Tensor, generator: torch.Generator) -> Tensor:
        """A point drawn uniformly from each ball."""
        raise NotImplementedError


class LinfBall(Ball):
    r"""{r : max_i |r_i| <= eps}. Steepest direction sign(g) (FGSM's step)."""

    norm = "linf"

    def project(self, delta: Tensor, eps: Tensor) -> Tensor:
        e = broadcast_rows(eps, delta)
        return clip(delta, -e, e)

    def steepest(self, grad: Tensor) -> Tensor:
        return grad.sign()

    def random(self, like: Tensor, eps: Tensor, generator: torch.Generator) -> Tensor:
        u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return (2 * u - 1) * broadcast_rows(eps, like)


class L2Ball(Ball):
    r"""{r : ||r||_2 <= eps}. Steepest direction g / ||g||_2."""

    norm = "l2"

    def project(self, delta: Tensor, eps: Tensor) -> Tensor:
        n = self.norm_of(delta)
        factor = torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
        return delta * broadcast_rows(factor, delta)

    def steepest(self, grad: Tensor) -> Tensor:
        return grad / broadcast_rows(self.norm_of(grad).clamp_min(1e-12), grad)

    def random(self, like: Tensor, eps: Tensor, generator: torch.Generator) -> Tensor:
        d = like[0].numel()
        g = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        u = torch.rand(len(like), generator=generator, device=like.device, dtype=like.dtype)
        radius = eps * u.pow(1.0 / d)
        return self.steepest(g) * broadcast_rows(radius, like)


class L1Ball(Ball):
    r"""{r : ||r||_1 <= eps}.

    Projection by the sort-based algorithm of Duchi et al. 2008 ("Efficient projections onto
    the l1-ball", ICML). The steepest direction puts equal mass on the ``1 - sparsity``
    fraction of coordinates with the largest |g| (Tramer & Boneh 2019, arXiv:1904.13000),
    since the exact L1 steepest step moves a single pixel.
    """

    norm = "l1"

    def __init__(self, sparsity: float = 0.95) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ThreatModelError(f"l1 sparsity must be in [0, 1), got {sparsity}")
        self.sparsity = sparsity

    def project(self, delta: Tensor, eps: Tensor) -> Tensor:
        v = delta.flatten(1)
        a = v.abs()
        u, _ = a.sort(dim=1, descending=True)
        css = u.cumsum(1)
        j = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
        cond = u * j > css - eps[:, None]
        rho = cond.to(v.dtype).mul(j).amax(1).clamp_min(1)  # last index where cond holds
        theta = (css.gather(1, rho.long()[:, None] - 1).squeeze(1) - eps) / rho
        w = v.sign() * (a - theta[:, None]).clamp_min(0)
        inside = a.sum(1) <= eps
        return torch.where(inside[:, None], v, w).view_as(delta)

    def steepest(self, grad: Tensor) -> Tensor:
        g = grad.flatten(1)
        k = max(1, int(math.ceil((1 - self.sparsity) * g.shape[1])))
        top = g.abs().topk(k, dim=1).indices
        d = torch.zeros_like(g).scatter_(1, top, g.gather(1, top).sign())
        return (d / k).view_as(grad)

    def random(self, like: Tensor, eps: Tensor, generator: torch.Generator) -> Tensor:
        n, d = len(like), like[0].numel()
        e = -torch.rand(n, d + 1, generator=generator, device=like.device, dtype=like.dtype).log()
        mag = e[:, :d] / e.sum(1, keepdim=True)  # uniform in the simplex {v >= 0, sum v <= 1}
        sign = torch.randint(0, 2, (n, d), generator=generator, device=like.device) * 2 - 1
        return (mag * sign * eps[:, None]).view_as(like)


_BALLS: dict[str, Ball] = {"linf": LinfBall(), "l2": L2Ball(), "l1": L1Ball()}


def ball(norm: str) -> Ball:
    """The ball object for a norm name ('linf', 'l2' or 'l1'); balls hold no state, so one
    object of each serves every caller."""
    if norm not in _BALLS:
        raise ThreatModelError(f"unknown norm {norm!r}; available: {', '.join(_BALLS)}")
    return _BALLS[norm]


def project_box(x: Tensor, x_adv: Tensor, eps: Tensor, b: Ball) -> Tensor:
    """Map x_adv into S(x): project x_adv - x onto the ball, then clip to [0, 1].

    Clipping only shrinks every |r_i|, so the result stays inside the ball.
    """
    return clip_box(x + b.project(x_adv - x, eps))


class Region:
    """The feasible set S(x) = {x' : ||x' - x|| <= eps, x' in [0, 1]} of a batch, for loops
    that project many times onto the same set; ``idx`` selects rows of the batch."""

    def __init__(self, x: Tensor, eps: Tensor, b: Ball) -> None:
        self.x, self.eps, self.ball = x, eps, b

    def project(self, x_adv: Tensor, idx: Tensor | None = None) -> Tensor:
        if idx is None:
            return project_box(self.x, x_adv, self.eps, self.ball)
        return project_box(self.x[idx], x_adv, self.eps[idx], self.ball)

    def project_(self, x_adv: Tensor, idx: Tensor | None = None) -> Tensor:
        """:meth:`project`, in x_adv's own storage where the set allows it (a temporary)."""
        return self.project(x_adv, idx)


class LinfRegion(Region):
    """S(x) for Linf is a box: clip x' to [max(x - eps, 0), min(x + eps, 1)], bounds computed
    once instead of at every projection."""

    def __init__(self, x: Tensor, eps: Tensor, b: Ball) -> None:
        super().__init__(x, eps, b)
        e = broadcast_rows(eps, x)
        self.lo, self.hi = (x - e).clamp_min(0.0), (x + e).clamp_max(1.0)

    def project(self, x_adv: Tensor, idx: Tensor | None = None) -> Tensor:
        if idx is None:
            return clip(x_adv, self.lo, self.hi)
        return clip(x_adv, self.lo[idx], self.hi[idx])

    def project_(self, x_adv: Tensor, idx: Tensor | None = None) -> Tensor:
        if idx is None:
            return torch.clamp(x_adv, self.lo, self.hi, out=x_adv)
        return torch.clamp(x_adv, self.lo[idx], self.hi[idx], out=x_adv)


class Box(Region):
    """S(x) for points that cannot leave the eps-ball (one step of size <= eps along a
    unit-norm direction from x): only the pixel box [0, 1] binds."""

    def project(self, x_adv: Tensor, idx: Tensor | None = None) -> Tensor:
        return clip_box(x_adv)

    def project_(self, x_adv: Tensor, idx: Tensor | None = None) -> Tensor:
        return x_adv.clamp_(0.0, 1.0)


def region(x: Tensor, eps: Tensor, b: Ball) -> Region:
    """The feasible set S(x) of ball ``b`` and radius eps (N,) around each row of x."""
    return LinfRegion(x, eps, b) if isinstance(b, LinfBall) else Region(x, eps, b)
