r"""Input transformations: image -> image maps used by defenses, detectors and EOT.

Every transformation is an :class:`torch.nn.Module` mapping a batch x in [0, 1] of shape
N x C x H x W to a batch of the same shape, dtype, device and range. The lecture's list
(small translation, rotation, mirror, shear, blur, Gaussian noise) is here, with scaling,
brightness, and three non-differentiable "input purifiers" from the defense literature:
JPEG compression, bit-depth reduction and median smoothing.

Fixed or random
---------------
Each transformation is built either *fixed* (``Translate(dx=2)``: always the same map) or
*random* (``Translate(max_shift=2)``: a shift drawn per example). Random draws come only from a
:class:`torch.Generator`:

- ``t(x)`` / ``t(x, generator=g)`` applies the map. A fixed transformation ignores the
  generator. A random one draws from ``g`` when given; otherwise from the module's own stream,
  a generator seeded with ``seed`` on first use (so ``t(x)`` works inside ``nn.Sequential``,
  and successive calls differ but the whole sequence replays after :meth:`Transform.reset`).
- ``t.sample(x, g)`` draws the per-example parameters (a tensor whose first dimension is N);
  ``t.apply(x, params)`` applies given parameters. ``forward = apply(x, sample(x, g))``.

Differentiability and BPDA
--------------------------
Affine warps use ``affine_grid`` / ``grid_sample``, blur is a convolution, noise and brightness
are additive: their input gradient is exact. JPEG, bit-depth reduction and median smoothing set
``differentiable = False``: their gradient is zero almost everywhere or uninformative.
:meth:`Transform.bpda` returns the exact transformed value with the gradient of a smooth
surrogate (identity by default; a cubic rounding for JPEG), the Backward Pass Differentiable
Approximation of Athalye, Carlini & Wagner 2018 (arXiv:1802.00420):

.. math::  \mathrm{bpda}(x) = \mathrm{stopgrad}(t(x)) + s(x) - \mathrm{stopgrad}(s(x)),
   \quad \nabla_x\, \mathrm{bpda} = \nabla_x s

:class:`BPDA` wraps a transformation as a module whose forward is its ``bpda``.
:class:`Compose` chains, :class:`RandomChoice` picks one transformation per example, and
:func:`distribution` builds the random transformation an EOT attack averages over
(Athalye et al. 2018, "Synthesizing robust adversarial examples", arXiv:1707.07397).

References:
    Guo et al., "Countering adversarial images using input transformations", ICLR 2018,
    arXiv:1711.00117 (JPEG, bit depth, ...). Xu, Evans & Qi, "Feature squeezing", NDSS 2018,
    arXiv:1704.01155 (bit-depth reduction, median smoothing). Shin & Song, "JPEG-resistant
    adversarial images", NeurIPS MLSec workshop 2017 (the cubic rounding surrogate).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.errors import InputError, UnknownNameError
from advlab.threat import clip_box

# ----------------------------------------------------------------------------- base


def _check(x: Tensor) -> None:
    """A cheap shape/dtype check (no device sync): float N x C x H x W."""
    if not isinstance(x, Tensor):
        raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dim() != 4:
        raise InputError(
            f"x must be a float tensor N x C x H x W in [0, 1], got dtype {x.dtype}, "
            f"shape {tuple(x.shape)}")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator, like: Tensor,
             cols: int = 1) -> Tensor:
    """n x cols draws from U[lo, hi], on the generator's device, moved to like's device."""
    u = torch.rand(n, cols, generator=generator, device=generator.device, dtype=like.dtype)
    return (lo + (hi - lo) * u).to(like.device)


class Transform(nn.Module):
    """Base class of every input transformation.

    Subclasses implement :meth:`apply` (and :meth:`fixed_params` / :meth:`sample` for the
    parameters); non-differentiable ones set ``differentiable = False`` and may override
    :meth:`surrogate` (identity by default).

    Args:
        random: True when parameters are drawn per example, False for a fixed map.
        seed: seeds the module's own stream, used when a random transformation is called
            without a generator.

    Shape:
        x: N x C x H x W in [0, 1] -> N x C x H x W in [0, 1], same dtype and device.
    """

    differentiable: ClassVar[bool] = True

    def __init__(self, *, random: bool, seed: int = 0) -> None:
        super().__init__()
        self.training = False  # no mode-dependent behaviour: built in eval mode, like a model
        self.random = random
        self.seed = seed
        self._streams: dict[str, torch.Generator] = {}

    # -- parameters -----------------------------------------------------------------------

    def fixed_params(self, x: Tensor) -> Any:
        """The parameters of a fixed transformation for the batch x."""
        raise NotImplementedError

    def sample(self, x: Tensor, generator: torch.Generator) -> Any:
        """Draw per-example parameters for the batch x from ``generator``."""
        raise NotImplementedError

    def params(self, x: Tensor, generator: torch.Generator | None = None) -> Any:
        """Fixed parameters, or a draw from ``generator`` (else the module's stream)."""
        if not self.random:
            return self.fixed_params(x)
        return self.sample(x, generator if generator is not None else self.stream(x.device))

    def stream(self, device: torch.device | str) -> torch.Generator:
        """The module's own generator on ``device``, seeded with ``seed`` on first use."""
        key = str(torch.device(device))
        if key not in self._streams:
            self._streams[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._streams[key]

    def reset(self) -> None:
        """Rewind the module's own streams to ``seed`` (the random sequence replays)."""
        self._streams.clear()

    # -- the map --------------------------------------------------------------------------

    def apply(self, x: Tensor, params: Any) -> Tensor:
        """Apply the transformation with the given parameters."""
        raise NotImplementedError

    def surrogate(self, x: Tensor, params: Any) -> Tensor:
        """A differentiable approximation of :meth:`apply` (BPDA's backward pass).

        The transformation itself when it is differentiable; the identity otherwise, unless
        a subclass knows a better smooth approximation.
        """
        return self.apply(x, params) if self.differentiable else x

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check(x)
        return self.apply(x, self.params(x, generator))

    def bpda(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The exact transformed value, with the gradient of :meth:`surrogate`."""
        _check(x)
        p = self.params(x, generator)
        out = self.apply(x, p)
        if self.differentiable:
            return out
        s = self.surrogate(x, p)
        return out.detach() + (s - s.detach())  # value: out exactly; gradient: d s / d x


def _value_or_range(name: str, value: float, maximum: float | None) -> None:
    if maximum is not None and maximum < 0:
        raise InputError(f"{name} must be non-negative, got {maximum}")
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {value}")


def _check_range(name: str, rng: tuple[float, float], low: float = 0.0) -> tuple[float, float]:
    lo, hi = float(rng[0]), float(rng[1])
    if not (low <= lo <= hi):
        raise InputError(f"{name} must satisfy {low} <= low <= high, got ({lo}, {hi})")
    return lo, hi


# ----------------------------------------------------------------------------- affine warps


def warp(x: Tensor, matrix: Tensor, shift: Tensor, mode: str = "bilinear") -> Tensor:
    r"""Resample x at :math:`A p + t` for every output pixel p (zero outside the image).

    Coordinates are in pixels, (horizontal, vertical) with the origin at the image centre
    and the vertical axis pointing down; ``matrix`` A (N x 2 x 2) and ``shift`` t (N x 2) map
    an *output* pixel to the *input* pixel it reads.

    Shape:
        x: N x C x H x W; matrix: N x 2 x 2; shift: N x 2 -> N x C x H x W.
    """
    n, _, h, w = x.shape
    s = torch.tensor([w / 2.0, h / 2.0], dtype=x.dtype, device=x.device)
    theta_a = matrix.to(x) * s[None, None, :] / s[None, :, None]  # S^-1 A S
    theta_t = shift.to(x) / s                                      # S^-1 t
    theta = torch.cat([theta_a, theta_t[:, :, None]], dim=2)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _eye(n: int, like: Tensor) -> Tensor:
    return torch.eye(2, dtype=like.dtype, device=like.device).expand(n, 2, 2)


class Translate(Transform):
    """Shift the image by (dx, dy) pixels (right, down), filling with zeros.

    Integer shifts copy pixels exactly (equal to ``torch.roll`` with the wrapped-around part
    set to zero); with ``integer=False`` shifts are real and bilinearly interpolated.

    Args:
        dx, dy: the fixed shift in pixels.
        max_shift: when given, random shifts drawn per example uniformly in
            [-max_shift, max_shift] for each axis (integers when ``integer``).
        integer: draw integer shifts and copy pixels (nearest sampling).
        seed: seeds the module's own stream.
    """

    def __init__(self, dx: float = 0.0, dy: float = 0.0, *, max_shift: float | None = None,
                 integer: bool = True, seed: int = 0) -> None:
        super().__init__(random=max_shift is not None, seed=seed)
        _value_or_range("max_shift", dx + dy, max_shift)
        if integer and (dx != int(dx) or dy != int(dy)):
            raise InputError(f"integer translation needs integer dx, dy, got {dx}, {dy}")
        self.dx, self.dy, self.max_shift, self.integer = dx, dy, max_shift, integer

    def fixed_params(self, x: Tensor) -> Tensor:
        return torch.tensor([self.dx, self.dy], dtype=x.dtype, device=x.device).expand(len(x), 2)

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        m = float(self.max_shift or 0.0)
        if self.integer:
            k = int(math.floor(m))
            d = torch.randint(-k, k + 1, (len(x), 2), generator=generator,
                              device=generator.device)
            return d.to(device=x.device, dtype=x.dtype)
        return _uniform(len(x), -m, m, generator, x, cols=2)

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        return warp(x, _eye(len(x), x), -params, mode="nearest" if self.integer else "bilinear")


class Rotate(Transform):
    """Rotate about the image centre by ``angle`` degrees, counter-clockwise as displayed
    (``Rotate(90)`` equals ``torch.rot90(x, 1, dims=(2, 3))`` on square images).

    Args:
        angle: the fixed angle in degrees.
        max_angle: when given, angles drawn per example uniformly in [-max_angle, max_angle].
        seed: seeds the module's own stream.
    """

    def __init__(self, angle: float = 0.0, *, max_angle: float | None = None,
                 seed: int = 0) -> None:
        super().__init__(random=max_angle is not None, seed=seed)
        _value_or_range("max_angle", angle, max_angle)
        self.angle, self.max_angle = angle, max_angle

    def fixed_params(self, x: Tensor) -> Tensor:
        return torch.full((len(x), 1), float(self.angle), dtype=x.dtype, device=x.device)

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        m = float(self.max_angle or 0.0)
        return _uniform(len(x), -m, m, generator, x)

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        t = params[:, 0] * (math.pi / 180.0)
        c, s = torch.cos(t), torch.sin(t)
        a = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)
        return warp(x, a, torch.zeros(len(x), 2, dtype=x.dtype, device=x.device))


class Shear(Transform):
    """Horizontal shear about the centre: the output pixel (u, v) reads input (u + s v, v).

    Args:
        shear: the fixed shear factor s.
        max_shear: when given, s drawn per example uniformly in [-max_shear, max_shear].
        seed: seeds the module's own stream.
    """

    def __init__(self, shear: float = 0.0, *, max_shear: float | None = None,
                 seed: int = 0) -> None:
        super().__init__(random=max_shear is not None, seed=seed)
        _value_or_range("max_shear", shear, max_shear)
        self.shear, self.max_shear = shear, max_shear

    def fixed_params(self, x: Tensor) -> Tensor:
        return torch.full((len(x), 1), float(self.shear), dtype=x.dtype, device=x.device)

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        m = float(self.max_shear or 0.0)
        return _uniform(len(x), -m, m, generator, x)

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        a = _eye(len(x), x).clone()
        a[:, 0, 1] = params[:, 0]
        return warp(x, a, torch.zeros(len(x), 2, dtype=x.dtype, device=x.device))


class Scale(Transform):
    """Zoom about the centre by ``factor`` (> 1 enlarges; the border fills with zeros).

    Args:
        factor: the fixed zoom factor (> 0).
        scale_range: when given, factors drawn per example uniformly in (low, high).
        seed: seeds the module's own stream.
    """

    def __init__(self, factor: float = 1.0, *, scale_range: tuple[float, float] | None = None,
                 seed: int = 0) -> None:
        super().__init__(random=scale_range is not None, seed=seed)
        if factor <= 0:
            raise InputError(f"scale factor must be positive, got {factor}")
        self.factor = factor
        self.scale_range = None if scale_range is None else _check_range(
            "scale_range", scale_range, low=1e-6)

    def fixed_params(self, x: Tensor) -> Tensor:
        return torch.full((len(x), 1), float(self.factor), dtype=x.dtype, device=x.device)

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        lo, hi = self.scale_range or (1.0, 1.0)
        return _uniform(len(x), lo, hi, generator, x)

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        a = _eye(len(x), x) / params[:, :, None]
        return warp(x, a, torch.zeros(len(x), 2, dtype=x.dtype, device=x.device))


class Mirror(Transform):
    """Horizontal flip (left-right mirror).

    Args:
        p: None for a fixed transformation that flips every image; a probability to flip
            each example independently (random).
        seed: seeds the module's own stream.
    """

    def __init__(self, p: float | None = None, *, seed: int = 0) -> None:
        super().__init__(random=p is not None, seed=seed)
        if p is not None and not 0.0 <= p <= 1.0:
            raise InputError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def fixed_params(self, x: Tensor) -> Tensor:
        return torch.ones(len(x), dtype=torch.bool, device=x.device)

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        u = torch.rand(len(x), generator=generator, device=generator.device)
        return (u < float(self.p or 0.0)).to(x.device)

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        return torch.where(params[:, None, None, None], x.flip(-1), x)


# ----------------------------------------------------------------------------- filters and noise


def gaussian_kernel1d(sigma: Tensor, radius: int) -> Tensor:
    """Normalised 1-D Gaussian kernels, one per sigma: (M,) -> M x (2 radius + 1), rows sum to 1."""
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].clamp_min(1e-6)) ** 2)
    return k / k.sum(1, keepdim=True)


class GaussianBlur(Transform):
    r"""Gaussian blur, a separable convolution with
    :math:`k(t) \propto e^{-t^2 / 2\sigma^2}` normalised to sum 1 (borders replicated).

    Args:
        sigma: the fixed standard deviation in pixels.
        sigma_range: when given, sigma drawn per example uniformly in (low, high).
        radius: kernel radius; default ceil(3 sigma_max), at least 1.
        seed: seeds the module's own stream.
    """

    def __init__(self, sigma: float = 1.0, *, sigma_range: tuple[float, float] | None = None,
                 radius: int | None = None, seed: int = 0) -> None:
        super().__init__(random=sigma_range is not None, seed=seed)
        if sigma <= 0:
            raise InputError(f"blur sigma must be positive, got {sigma}")
        self.sigma = sigma
        self.sigma_range = None if sigma_range is None else _check_range(
            "sigma_range", sigma_range, low=1e-6)
        top = self.sigma_range[1] if self.sigma_range else sigma
        self.radius = radius if radius is not None else max(1, math.ceil(3 * top))

    def kernel(self, sigma: float | None = None) -> Tensor:
        """The 2-D kernel (2r+1) x (2r+1) for one sigma (default the fixed one); sums to 1."""
        k = gaussian_kernel1d(torch.tensor([sigma or self.sigma], dtype=torch.float64),
                              self.radius)[0]
        return torch.outer(k, k)

    def fixed_params(self, x: Tensor) -> Tensor:
        return torch.full((len(x), 1), float(self.sigma), dtype=x.dtype, device=x.device)

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        lo, hi = self.sigma_range or (self.sigma, self.sigma)
        return _uniform(len(x), lo, hi, generator, x)

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        n, c, h, w = x.shape
        r = self.radius
        k = gaussian_kernel1d(params[:, 0], r).repeat_interleave(c, 0)  # (N*C) x (2r+1)
        z = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
        z = F.conv2d(z, k[:, None, None, :], groups=n * c)   # horizontal
        z = F.conv2d(z, k[:, None, :, None], groups=n * c)   # vertical
        return z.reshape(n, c, h, w)


class GaussianNoise(Transform):
    """Additive Gaussian noise, clipped to [0, 1]: x + N(0, std^2). Always random.

    Args:
        std: the noise standard deviation (pixel units).
        seed: seeds the module's own stream.
    """

    def __init__(self, std: float = 0.1, *, seed: int = 0) -> None:
        super().__init__(random=True, seed=seed)
        if std < 0:
            raise InputError(f"noise std must be non-negative, got {std}")
        self.std = std

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        z = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
        return z.to(x.device) * self.std

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        return clip_box(x + params)


class Brightness(Transform):
    """Add a constant ``delta`` to every pixel, clipped to [0, 1].

    Args:
        delta: the fixed brightness change.
        max_delta: when given, delta drawn per example uniformly in [-max_delta, max_delta].
        seed: seeds the module's own stream.
    """

    def __init__(self, delta: float = 0.0, *, max_delta: float | None = None,
                 seed: int = 0) -> None:
        super().__init__(random=max_delta is not None, seed=seed)
        _value_or_range("max_delta", delta, max_delta)
        self.delta, self.max_delta = delta, max_delta

    def fixed_params(self, x: Tensor) -> Tensor:
        return torch.full((len(x), 1), float(self.delta), dtype=x.dtype, device=x.device)

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        m = float(self.max_delta or 0.0)
        return _uniform(len(x), -m, m, generator, x)

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        return clip_box(x + params[:, :, None, None])


# ----------------------------------------------------------------------------- purifiers


class BitDepth(Transform):
    r"""Bit-depth reduction to ``bits`` bits per channel:
    :math:`x' = \mathrm{round}(x (2^b - 1)) / (2^b - 1)` (feature squeezing).
    Not differentiable; BPDA surrogate: the identity.

    Args:
        bits: bits per channel, 1 to 8.
    """

    differentiable = False

    def __init__(self, bits: int = 4) -> None:
        super().__init__(random=False)
        if not 1 <= int(bits) <= 8:
            raise InputError(f"bits must be in 1..8, got {bits}")
        self.bits = int(bits)

    def fixed_params(self, x: Tensor) -> None:
        return None

    def apply(self, x: Tensor, params: None) -> Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(x * levels) / levels


class MedianSmoothing(Transform):
    """Median filter over k x k windows (reflected borders; feature squeezing).
    Treated as non-differentiable (its gradient reaches one pixel per window);
    BPDA surrogate: the identity.

    Args:
        kernel_size: odd window size k.
    """

    differentiable = False

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__(random=False)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise InputError(f"median kernel_size must be odd and positive, got {kernel_size}")
        self.kernel_size = kernel_size

    def fixed_params(self, x: Tensor) -> None:
        return None

    def apply(self, x: Tensor, params: None) -> Tensor:
        k, r = self.kernel_size, self.kernel_size // 2
        mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
        z = F.pad(x, (r, r, r, r), mode=mode)
        z = z.unfold(2, k, 1).unfold(3, k, 1)  # N x C x H x W x k x k
        return z.flatten(-2).median(-1).values


_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
         14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
         18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
           24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


def dct_matrix(n: int = 8, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:
    r"""The orthonormal DCT-II matrix D, :math:`D_{kj} = c_k \cos(\pi (2j + 1) k / 2n)`."""
    j = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * j[None, :] + 1) * j[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def jpeg_tables(quality: Tensor) -> Tensor:
    """IJG quantisation tables scaled for each quality (1..100): (N,) -> N x 2 x 8 x 8
    (luma, chroma)."""
    q = quality.clamp(1, 100)
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    base = torch.tensor([_LUMA, _CHROMA], dtype=quality.dtype, device=quality.device)
    t = torch.floor((base[None] * scale[:, None, None] + 50.0) / 100.0).clamp(1, 255)
    return t.view(-1, 2, 8, 8)


_RGB2YCC = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]


def _cubic_round(z: Tensor) -> Tensor:
    """round(z) + (z - round(z))^3: equal to rounding up to 1/8, with a non-zero gradient."""
    r = torch.round(z)
    return r + (z - r) ** 3


class JPEG(Transform):
    r"""JPEG-like compression in torch: 8 x 8 block DCT, quantisation by the IJG tables at
    ``quality``, inverse DCT. RGB goes through YCbCr (luma / chroma tables, no chroma
    subsampling); one-channel images use the luma table. Pixels are not re-rounded to 8 bits.

    .. math::  \hat B = D^\top \big(Q \odot \mathrm{round}(D (255 B - 128) D^\top / Q)\big) D

    Not differentiable (rounding); BPDA surrogate: the identity (``surrogate="identity"``) or
    the same pipeline with :math:`\mathrm{round}(z) + (z - \mathrm{round}(z))^3`
    (``surrogate="cubic"``, Shin & Song 2017).

    Args:
        quality: the fixed quality, 1..100.
        quality_range: when given, an integer quality drawn per example in [low, high].
        surrogate: "identity" or "cubic".
        seed: seeds the module's own stream.
    """

    differentiable = False

    def __init__(self, quality: int = 75, *, quality_range: tuple[int, int] | None = None,
                 surrogate: str = "identity", seed: int = 0) -> None:
        super().__init__(random=quality_range is not None, seed=seed)
        if not 1 <= quality <= 100:
            raise InputError(f"JPEG quality must be in 1..100, got {quality}")
        if surrogate not in ("identity", "cubic"):
            raise InputError(f"JPEG surrogate must be 'identity' or 'cubic', got {surrogate!r}")
        self.quality, self.surrogate_kind = quality, surrogate
        self.quality_range = None if quality_range is None else tuple(
            int(v) for v in _check_range("quality_range", quality_range, low=1))
        if self.quality_range and self.quality_range[1] > 100:
            raise InputError(f"quality_range must lie in 1..100, got {quality_range}")

    def fixed_params(self, x: Tensor) -> Tensor:
        return torch.full((len(x),), float(self.quality), dtype=x.dtype, device=x.device)

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        lo, hi = self.quality_range or (self.quality, self.quality)
        q = torch.randint(lo, hi + 1, (len(x),), generator=generator, device=generator.device)
        return q.to(device=x.device, dtype=x.dtype)

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        return self._codec(x, params, torch.round)

    def surrogate(self, x: Tensor, params: Tensor) -> Tensor:
        return self._codec(x, params, _cubic_round) if self.surrogate_kind == "cubic" else x

    def _codec(self, x: Tensor, quality: Tensor, rounding: Any) -> Tensor:
        n, c, h, w = x.shape
        if c not in (1, 3):
            raise InputError(f"JPEG needs 1 or 3 channels, got {c}")
        z = x * 255.0
        if c == 3:
            m = torch.tensor(_RGB2YCC, dtype=x.dtype, device=x.device)
            z = torch.einsum("ij,njhw->nihw", m, z)
            z = z + torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device)[:, None,
                                                                                      None]
        ph, pw = (-h) % 8, (-w) % 8
        z = F.pad(z - 128.0, (0, pw, 0, ph), mode="replicate")
        hb, wb = z.shape[2] // 8, z.shape[3] // 8
        blocks = z.view(n, c, hb, 8, wb, 8).permute(0, 1, 2, 4, 3, 5)  # N C hb wb 8 8
        d = dct_matrix(8, x.dtype, x.device)
        coef = d @ blocks @ d.T
        tables = jpeg_tables(quality)                                   # N x 2 x 8 x 8
        q = tables[:, [0] + [1] * (c - 1)][:, :, None, None]            # N C 1 1 8 8
        blocks = d.T @ (rounding(coef / q) * q) @ d
        z = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, hb * 8, wb * 8)[:, :, :h, :w] + 128.0
        if c == 3:
            z = z - torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device)[:, None,
                                                                                      None]
            inv = torch.linalg.inv(torch.tensor(_RGB2YCC, dtype=torch.float64)).to(x)
            z = torch.einsum("ij,njhw->nihw", inv, z)
        return clip_box(z / 255.0)


# ----------------------------------------------------------------------------- combinators


class Compose(Transform):
    """Apply transformations in order (each draws its own parameters).

    Args:
        transforms: the transformations, applied first to last.
    """

    def __init__(self, transforms: Sequence[Transform], *, seed: int = 0) -> None:
        ts = list(transforms)
        for t in ts:
            if not isinstance(t, Transform):
                raise InputError(f"Compose needs Transform modules, got {type(t).__name__}")
        super().__init__(random=any(t.random for t in ts), seed=seed)
        self.transforms = nn.ModuleList(ts)

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return all(t.differentiable for t in self.transforms)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check(x)
        for t in self.transforms:
            x = t(x, generator)
        return x

    def bpda(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check(x)
        for t in self.transforms:
            x = t.bpda(x, generator)
        return x

    def reset(self) -> None:
        super().reset()
        for t in self.transforms:
            t.reset()


class RandomChoice(Transform):
    """Apply one transformation per example, chosen uniformly (or with weights ``p``).

    The choice is drawn from the generator (else the module's own stream); the chosen
    transformation then draws its parameters from the same generator.

    Args:
        transforms: the candidates.
        p: optional probabilities, one per candidate.
        seed: seeds the module's own stream.
    """

    def __init__(self, transforms: Sequence[Transform], p: Sequence[float] | None = None, *,
                 seed: int = 0) -> None:
        ts = list(transforms)
        if not ts or not all(isinstance(t, Transform) for t in ts):
            raise InputError("RandomChoice needs a non-empty list of Transform modules")
        super().__init__(random=True, seed=seed)
        self.transforms = nn.ModuleList(ts)
        w = torch.ones(len(ts), dtype=torch.float64) if p is None else torch.tensor(
            list(p), dtype=torch.float64)
        if w.shape != (len(ts),) or (w < 0).any() or w.sum() <= 0:
            raise InputError(f"p must hold {len(ts)} non-negative weights, got {p}")
        self.p = (w / w.sum()).tolist()

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return all(t.differentiable for t in self.transforms)

    def choose(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Index of the transformation applied to each example, (N,) int64."""
        w = torch.tensor(self.p, device=generator.device)
        return torch.multinomial(w.expand(len(x), -1), 1, replacement=True,
                                 generator=generator)[:, 0].to(x.device)

    def _run(self, x: Tensor, generator: torch.Generator | None, bpda: bool) -> Tensor:
        _check(x)
        g = generator if generator is not None else self.stream(x.device)
        which = self.choose(x, g)
        out = torch.zeros_like(x)
        for i, t in enumerate(self.transforms):
            idx = (which == i).nonzero().squeeze(1)
            if len(idx):
                part = t.bpda(x[idx], g) if bpda else t(x[idx], g)
                out = out.index_put((idx,), part)
        return out

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self._run(x, generator, bpda=False)

    def bpda(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self._run(x, generator, bpda=True)

    def reset(self) -> None:
        super().reset()
        for t in self.transforms:
            t.reset()


class BPDA(nn.Module):
    """A transformation whose forward is its :meth:`Transform.bpda`: exact values, surrogate
    gradients. Use it in a differentiable copy of a defended model (BPDA attack).

    Args:
        transform: the wrapped transformation.

    References: Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of
    security", ICML 2018, arXiv:1802.00420.
    """

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.training = False
        if not isinstance(transform, Transform):
            raise InputError(f"BPDA wraps a Transform, got {type(transform).__name__}")
        self.transform = transform

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.transform.bpda(x, generator)


# ----------------------------------------------------------------------------- by name

TRANSFORMS: dict[str, type[Transform]] = {
    "translate": Translate, "rotate": Rotate, "mirror": Mirror, "shear": Shear,
    "scale": Scale, "blur": GaussianBlur, "noise": GaussianNoise, "brightness": Brightness,
    "jpeg": JPEG, "bitdepth": BitDepth, "median": MedianSmoothing,
}

# the keyword a bare number means in distribution({"translate": 2, ...})
_RANDOM_KEYWORD: dict[str, str] = {
    "translate": "max_shift", "rotate": "max_angle", "mirror": "p", "shear": "max_shear",
    "scale": "scale_range", "blur": "sigma_range", "noise": "std", "brightness": "max_delta",
    "jpeg": "quality_range", "bitdepth": "bits", "median": "kernel_size",
}

# the lecture's list ("small translation, rotation, mirror, shear, blur, Gaussian noise")
LECTURE: dict[str, Any] = {
    "translate": 2, "rotate": 15.0, "mirror": 0.5, "shear": 0.2,
    "blur": (0.5, 1.0), "noise": 0.1,
}


def build(name: str, **kwargs: Any) -> Transform:
    """A transformation by name (see ``TRANSFORMS``) with keyword arguments."""
    if name not in TRANSFORMS:
        raise UnknownNameError("transform", name, list(TRANSFORMS))
    return TRANSFORMS[name](**kwargs)


def distribution(spec: str | Mapping[str, Any] | Sequence[Transform | str] | Transform
                 | None = None, *, mode: str = "compose", seed: int = 0) -> Transform:
    """The random transformation an EOT attack (or a randomised defense) averages over.

    Args:
        spec: ``None`` or ``"lecture"``: the lecture's list (translation <= 2 px, rotation
            <= 15 degrees, mirror with p = 0.5, shear <= 0.2, blur sigma in [0.5, 1], noise
            std 0.1); a name or list of names (their ``LECTURE`` ranges, or defaults); a
            mapping name -> kwargs dict, or name -> a number / pair for the main random
            argument (``{"translate": 2, "rotate": 10}``); a list of Transform modules; or one
            Transform (returned as is).
        mode: "compose" applies all of them in order; "choice" applies one per example.
        seed: seeds the combinator's (and the built transformations') own streams.

    Returns:
        A :class:`Compose` or :class:`RandomChoice` (or the single Transform given).
    """
    if isinstance(spec, Transform):
        return spec
    if spec is None or spec == "lecture":
        spec = LECTURE
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, Mapping):
        ts = [_from_spec(name, value, seed) for name, value in spec.items()]
    else:
        ts = [t if isinstance(t, Transform) else _from_spec(t, LECTURE.get(t), seed)
              for t in spec]
    if mode == "compose":
        return Compose(ts, seed=seed)
    if mode == "choice":
        return RandomChoice(ts, seed=seed)
    raise InputError(f"distribution mode must be 'compose' or 'choice', got {mode!r}")


def _from_spec(name: str, value: Any, seed: int) -> Transform:
    if name not in TRANSFORMS:
        raise UnknownNameError("transform", name, list(TRANSFORMS))
    if isinstance(value, Mapping):
        kwargs = dict(value)
    elif value is None:
        kwargs = {}
    else:
        kwargs = {_RANDOM_KEYWORD[name]: value}
    if name not in ("bitdepth", "median"):
        kwargs.setdefault("seed", seed)
    return build(name, **kwargs)
