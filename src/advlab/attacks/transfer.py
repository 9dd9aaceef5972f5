r"""Transfer-enhancing attacks: MI-FGSM on a surrogate model, with the changes that make its
examples fool *other* models (the lecture's transferability), and an ensemble of surrogates.

All members iterate, for T steps of size :math:`\alpha = \epsilon / T` from :math:`x_0 = x`,

.. math::  g_{t+1} = \mu\, g_t + \frac{G_t}{\|G_t\|_1}, \qquad
           x_{t+1} = \Pi_{S(x)}\big(x_t + \alpha\, \mathrm{sign}(g_{t+1})\big)

(MI-FGSM), and differ in the gradient :math:`G_t` they feed it:

- DI (input diversity): :math:`\nabla J(D(x_t))`, where D, with probability p, shrinks the
  image to a random size in :math:`[\lfloor rH \rfloor, H)` and zero-pads it back to H at a
  random offset (one draw per step for the batch).
- TI (translation invariance): :math:`W * \nabla J`, the gradient convolved with a Gaussian
  kernel W, the gradient of the loss averaged over small translations.
- NI (Nesterov): the gradient at the look-ahead point :math:`x_t + \alpha \mu g_t`.
- SI (scale invariance): :math:`\frac{1}{m}\sum_{i=0}^{m-1} \nabla J(x / 2^i)`, the loss
  averaged over scaled copies.
- VMI (variance tuning): :math:`G_t = \nabla J(x_t) + v_t` with
  :math:`v_{t+1} = \frac{1}{N}\sum_{i=1}^N \nabla J(x_t + r_i) - \nabla J(x_t)`,
  :math:`r_i \sim U[-\beta\epsilon, \beta\epsilon]^D`.

The options compose (TI-DIM, SI-NI-TI-DIM, ...). The loop is MI-FGSM's, the shared loop of
gradient.py; the enhancements are its gradient source (:class:`TransferGradient`, which sees
the loop's momentum for NI's look-ahead). It runs every step for every example: a transfer
attack keeps pushing after the surrogate is fooled, so it has no early stopping.
:class:`Ensemble` averages the logits of several surrogates, the
ensemble attack of Liu et al. and Dong et al.

References: Dong et al., "Boosting adversarial attacks with momentum", CVPR 2018,
arXiv:1710.06081. Xie et al., "Improving transferability of adversarial examples with input
diversity", CVPR 2019, arXiv:1803.06978. Dong et al., "Evading defenses to transferable
adversarial examples by translation-invariant attacks", CVPR 2019, arXiv:1904.02884. Lin et
al., "Nesterov accelerated gradient and scale invariance for adversarial attacks", ICLR 2020,
arXiv:1908.06281. Wang & He, "Enhancing the transferability of adversarial attacks through
variance tuning", CVPR 2021, arXiv:2103.15571. Liu et al., "Delving into transferable
adversarial examples and black-box attacks", ICLR 2017, arXiv:1611.02770.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.attacks.base import register
from advlab.attacks.gradient import MIFGSM, MomentumSettings, Probe, Source
from advlab.attacks.settings import at_least
from advlab.errors import ThreatModelError
from advlab.losses import Objective
from advlab.threat import broadcast_rows


def gaussian_kernel(size: int, nsig: float = 3.0) -> Tensor:
    """A size x size Gaussian kernel over [-nsig, nsig]^2 standard deviations, summing to 1."""
    t = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    k1 = torch.exp(-t * t / 2)
    k = torch.outer(k1, k1)
    return k / k.sum()


def smooth(grad: Tensor, kernel: Tensor) -> Tensor:
    """TI: each channel of the gradient convolved with the kernel (zero padding, same size)."""
    c, size = grad.shape[1], kernel.shape[-1]
    w = kernel.to(grad)[None, None].expand(c, 1, size, size)
    return F.conv2d(grad, w, padding=size // 2, groups=c)


def diverse(x: Tensor, p: float, resize: float, generator: torch.Generator) -> Tensor:
    """DI: with probability p, shrink the batch to a random side in [floor(resize * H), H)
    (bilinear) and zero-pad it back to H x W at a random offset; else x itself."""
    h, w = x.shape[-2:]
    lo = int(h * resize)
    draw = torch.rand(1, generator=generator, device=x.device).item()
    if draw >= p or lo >= h:
        return x
    side = int(torch.randint(lo, h, (1,), generator=generator, device=x.device))
    side_w = max(1, round(side * w / h))
    small = F.interpolate(x, size=(side, side_w), mode="bilinear", align_corners=False)
    top = int(torch.randint(0, h - side + 1, (1,), generator=generator, device=x.device))
    left = int(torch.randint(0, w - side_w + 1, (1,), generator=generator, device=x.device))
    return F.pad(small, (left, w - side_w - left, top, h - side - top))


class Ensemble(nn.Module):
    """Several surrogate models as one: the (weighted) mean of their logits.

    Args:
        models: classifiers with the same input and classes, each in eval mode.
        weights: one non-negative weight per model (default equal), normalised to sum 1.

    The container itself is in eval mode; the models are used as they are (never switched).

    References: Liu et al., ICLR 2017, arXiv:1611.02770; Dong et al., CVPR 2018 (logit
    ensemble), arXiv:1710.06081.
    """

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None
                 ) -> None:
        super().__init__()
        if len(models) == 0:
            raise ThreatModelError("an ensemble needs at least one model")
        w = torch.ones(len(models), dtype=torch.float64) if weights is None else \
            torch.tensor(weights, dtype=torch.float64)
        if w.shape != (len(models),) or (w < 0).any() or w.sum() <= 0:
            raise ThreatModelError("need one non-negative weight per model, not all zero")
        self.members = nn.ModuleList(models)
        self.weights = (w / w.sum()).tolist()
        self.training = False  # only the container's flag: the members are left as they are

    def forward(self, x: Tensor) -> Tensor:
        return sum(w * m(x) for w, m in zip(self.weights, self.members))


class TransferSettings(MomentumSettings):
    """:class:`~advlab.attacks.gradient.MomentumSettings` and the transfer enhancements
    (see :class:`TransferAttack`), checked: 0 <= diversity <= 1, 0 < resize <= 1, an odd
    kernel side (or 0), scales >= 1, variance >= 0, beta >= 0. The source is their
    :class:`TransferGradient`."""

    diversity: float = 0.0
    resize: float = 0.9
    kernel: int = 0
    nesterov: bool = False
    scales: int = 1
    variance: int = 0
    beta: float = 1.5

    def check(self) -> None:
        if not 0 <= self.diversity <= 1 or not 0 < self.resize <= 1:
            raise ThreatModelError("need 0 <= diversity <= 1 and 0 < resize <= 1")
        if self.kernel < 0 or (self.kernel > 1 and self.kernel % 2 == 0):
            raise ThreatModelError(f"the TI kernel side must be odd (or 0), got {self.kernel}")
        at_least(1, scales=self.scales)
        at_least(0, variance=self.variance, beta=self.beta)
        super().check()
        self.resolve("source", TransferGradient(self))


class TransferGradient(Source):
    r"""The transfer family's gradient source: :math:`G_t` (DI, SI, TI) at the iterate, or
    at NI's look-ahead point :math:`x_t + \alpha \mu g_t` (the loop's momentum and step
    sizes, ``probe.run``), plus VMI's variance term :math:`v_t`, which it keeps in the
    run's state.

    Returns the surrogate's logits on the first (unscaled, possibly diversified) copy.
    """

    def __init__(self, s: TransferSettings) -> None:
        self.decay, self.diversity, self.resize, self.kernel = (s.decay, s.diversity,
                                                                s.resize, s.kernel)
        self.nesterov, self.scales, self.variance, self.beta = (s.nesterov, s.scales,
                                                                s.variance, s.beta)

    def __call__(self, objective: Objective, probe: Probe, x_adv: Tensor, y: Tensor,
                 target: Tensor | None, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        run = probe.run
        rows = slice(None) if idx is None else idx
        look = x_adv + run["alpha"][rows] * self.decay * run["momentum"][rows] \
            if self.nesterov else x_adv
        grad, logits = self.at(objective, probe, look, y, target)
        total = grad + run["variance"][rows] if self.variance else grad
        if self.variance:
            run["variance"][rows] = self.neighbourhood(objective, probe, x_adv, y, target,
                                                       run["eps"][rows]) - grad
        return total, logits

    def at(self, objective: Objective, probe: Probe, x: Tensor, y: Tensor,
           target: Tensor | None) -> tuple[Tensor, Tensor]:
        """G at x: the loss gradient through DI's transform, averaged over SI's scales, then
        smoothed by TI's kernel; and the logits of the first copy."""
        assert probe.generator is not None
        x = x.detach().requires_grad_(True)
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        first = None
        for i in range(self.scales):
            seen = diverse(x / 2 ** i, self.diversity, self.resize, probe.generator) \
                if self.diversity else x / 2 ** i
            logits = probe.model(seen)
            first = logits if first is None else first
            total = total + objective(logits, y, target).sum()
        (grad,) = torch.autograd.grad(total / self.scales, x)
        assert first is not None
        grad = smooth(grad, gaussian_kernel(self.kernel)) if self.kernel > 1 else grad
        return grad, first.detach()

    def neighbourhood(self, objective: Objective, probe: Probe, x: Tensor, y: Tensor,
                      target: Tensor | None, eps: Tensor) -> Tensor:
        """VMI: the mean gradient G over N uniform points of the box of radius beta * eps."""
        assert probe.generator is not None
        radius = broadcast_rows(self.beta * eps, x)
        total = torch.zeros_like(x)
        for _ in range(self.variance):
            u = torch.rand(x.shape, generator=probe.generator, device=x.device, dtype=x.dtype)
            total += self.at(objective, probe, x + (2 * u - 1) * radius, y, target)[0]
        return total / self.variance


@register("di-fgsm", knowledge="white", goal="both", norm="linf", kind="iterative",
          defaults={"diversity": 0.5})
@register("ti-fgsm", knowledge="white", goal="both", norm="linf", kind="iterative",
          defaults={"diversity": 0.5, "kernel": 5})
@register("ni-fgsm", knowledge="white", goal="both", norm="linf", kind="iterative",
          defaults={"nesterov": True})
@register("si-ni-fgsm", knowledge="white", goal="both", norm="linf", kind="iterative",
          defaults={"nesterov": True, "scales": 5})
@register("vmi-fgsm", knowledge="white", goal="both", norm="linf", kind="iterative",
          defaults={"variance": 20})
class TransferAttack(MIFGSM):
    r"""MI-FGSM with the transfer enhancements DI, TI, NI, SI and VMI (Linf), on the shared
    loop of :mod:`advlab.attacks.gradient` with the gradient source :class:`TransferGradient`.

    Settings (:class:`TransferSettings`):
        eps: Linf radius (pixel space).
        steps: T; the step size is eps / T.
        decay: momentum :math:`\mu`.
        diversity: DI's probability p of transforming the input (0: off).
        resize: DI's smallest side, as a fraction r of the image side.
        kernel: TI's Gaussian kernel side (0 or 1: off; odd), over +-3 standard deviations.
        nesterov: NI's look-ahead gradient.
        scales: SI's number m of scaled copies (1: off).
        variance: VMI's number N of neighbours (0: off).
        beta: VMI's neighbourhood radius, as a multiple of eps.
        loss: "ce" (the papers'), "margin" or "dlr".
        seed: seeds DI's transforms and VMI's neighbours.

    Shape: x N x C x H x W in [0, 1], y (N,). Cost per step: scales x (1 + variance)
    forward-backward passes of the surrogate.

    References: see the module docstring.
    """

    Settings = TransferSettings
    fixed = {"norm": "linf", "early_stop": False, "source": None}

    def init_memory(self, x: Tensor) -> dict[str, Tensor]:
        """MI-FGSM's momentum and VMI's variance term."""
        return {**super().init_memory(x), "variance": torch.zeros_like(x)}
