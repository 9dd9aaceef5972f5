r"""Adversarial patch: a universal, targeted patch that works wherever it is pasted.

A patch p (with a mask m, square or circular) is pasted onto an image x by an operator
:math:`A(p, x, l, t)` that scales, rotates and translates it (the transformation t and the
location l), and trained by expectation over transformation:

.. math::  \hat p = \arg\max_p\ \mathbb{E}_{x \sim X,\, t \sim T,\, l \sim L}
           \log \Pr(\hat y = y_{target} \mid A(p, x, l, t)).

Pasting is alpha compositing with the transformed mask,
:math:`A = (1 - m_t) \odot x + (m \odot p)_t`, where :math:`(\cdot)_t` resamples an image
through an affine grid (``torch.nn.functional.affine_grid`` / ``grid_sample``): outside the
transformed mask the image is unchanged, exactly.

References:
    Brown, Mane, Roy, Abadi & Gilmer, "Adversarial patch", NeurIPS workshop 2017,
    arXiv:1712.09665. Athalye et al., "Synthesizing robust adversarial examples", ICML 2018,
    arXiv:1707.07397 (expectation over transformation).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, register
from advlab.attacks.settings import Settings, at_least, one_of, positive
from advlab.errors import LabelError, ThreatModelError
from advlab.validation import check_eval_mode, check_images

log = logging.getLogger(__name__)


@dataclass
class Patch:
    """A trained patch.

    Attributes:
        patch: C x P x P values in [0, 1].
        mask: 1 x P x P, 1 inside the patch's shape (square or disc), else 0.
        target: the class the patch makes the model predict.
        success_rate: fraction of the fitting images (one random placement each) classified
            as the target with the patch on.
    """

    patch: Tensor
    mask: Tensor
    target: int
    success_rate: float


def patch_mask(size: int, shape: str, like: Tensor) -> Tensor:
    """1 x P x P mask: all ones (square) or the inscribed disc (circle)."""
    if shape == "square":
        return torch.ones(1, size, size, dtype=like.dtype, device=like.device)
    c = (torch.arange(size, dtype=like.dtype, device=like.device) + 0.5) - size / 2
    return ((c[:, None] ** 2 + c[None, :] ** 2) <= (size / 2) ** 2).to(like.dtype)[None]


def paste(x: Tensor, patch: Tensor, mask: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Paste a patch onto each image through the affine maps theta.

    The patch is centred on a canvas of the image's size; ``theta`` (N x 2 x 3, output
    coordinates -> canvas coordinates, normalised to [-1, 1]) places it per image.

    Args:
        x: images N x C x H x W.
        patch: C x P x P (one patch for all images) or N x C x P x P (one per image).
        mask: 1 x P x P.
        theta: N x 2 x 3.

    Returns:
        (x_adv, m): the patched images and the transformed masks (N x 1 x H x W, in [0, 1]);
        x_adv equals x wherever m is 0.
    """
    n, c, h, w = x.shape
    patch = patch.expand(n, -1, -1, -1) if patch.dim() == 3 else patch
    p = patch.shape[-1]
    top, left = (h - p) // 2, (w - p) // 2
    pad = (left, w - p - left, top, h - p - top)
    layers = torch.cat([patch * mask, mask.expand(n, 1, p, p)], 1)  # premultiplied + alpha
    canvas = F.pad(layers, pad)
    grid = F.affine_grid(theta, [n, c + 1, h, w], align_corners=False)
    out = F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    m = out[:, -1:]
    return (1 - m) * x + out[:, :-1], m


def random_placements(n: int, size: int, image: tuple[int, int], scale: tuple[float, float],
                      rotation: float, generator: torch.Generator, like: Tensor) -> Tensor:
    r"""N random affine maps theta (N x 2 x 3): scale s, rotation phi, translation (tx, ty)
    such that the rotated, scaled patch stays inside the image.

    The patch point c maps to :math:`o = s R_\phi c + \tau`, so the sampling grid (output ->
    canvas) is :math:`c = R_{-\phi}(o - \tau) / s`.
    """
    h, w = image

    def uniform(lo: float | Tensor, hi: float | Tensor) -> Tensor:
        u = torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)
        return lo + (hi - lo) * u

    s = uniform(scale[0], scale[1])
    phi = uniform(-rotation, rotation) * math.pi / 180
    reach = s * size * (math.sqrt(2) if rotation else 1.0)  # half-diagonal when rotated
    half_x = (1 - reach / w).clamp_min(0)
    half_y = (1 - reach / h).clamp_min(0)
    tx, ty = uniform(-half_x, half_x), uniform(-half_y, half_y)
    cos, sin = torch.cos(phi), torch.sin(phi)
    inv = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1) / s[:, None,
                                                                                        None]
    shift = -(inv @ torch.stack([tx, ty], 1)[:, :, None])
    return torch.cat([inv, shift], 2)


class PatchSettings(Settings):
    """The settings of :class:`AdversarialPatch` (its docstring): shape circle or square,
    0 < size <= 1, 0 < scale[0] <= scale[1], rotation >= 0, steps and batch_size >= 1,
    lr > 0."""

    size: float = 0.5
    shape: str = "circle"
    scale: tuple[float, float] = (0.8, 1.2)
    rotation: float = 22.5
    steps: int = 100
    lr: float = 0.05
    batch_size: int = 64
    seed: int = 0

    def check(self) -> None:
        one_of("patch shape", self.shape, ("circle", "square"))
        scale = tuple(self.scale)
        if not 0 < self.size <= 1 or len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ThreatModelError(f"need 0 < size <= 1 and scale (lo, hi) with 0 < lo <= hi, "
                                   f"got {self.size}, {scale}")
        self.resolve("scale", scale)
        at_least(0, rotation=self.rotation)
        at_least(1, steps=self.steps, batch_size=self.batch_size)
        positive(lr=self.lr)


@register("patch", knowledge="white", goal="targeted", norm="patch", kind="optimization",
          bounded=False)
class AdversarialPatch(Attack):
    """Adversarial patch (Brown et al. 2017): universal, targeted, trained with EOT.

    Args:
        size: the patch side as a fraction of the image side (0.5: 14 pixels on MNIST; the
            zoo models shrug off smaller patches: ``python benchmarks/
            whitebox_apgd_universal_eot.py --sections patch-size``, figures in
            benchmarks/results/whitebox_apgd_universal_eot-patch-size.json).
        shape: "circle" (as in the paper) or "square".
        scale: range of the random scale factor.
        rotation: largest random rotation, in degrees.
        steps: Adam steps (100: on the zoo models 200 gain little; same file).
        lr: Adam learning rate (patch values live in [0, 1]).
        batch_size: images per step, each with its own random placement.
        seed: seeds the initial patch, the mini-batches and the placements.

    ``fit(model, x, target)`` returns a :class:`Patch`; calling the attack fits one patch per
    target class on the batch and pastes it on each image at a random placement
    (``info["mask"]`` holds the transformed masks). The perturbation is not norm-bounded:
    the taxonomy's norm is "patch".

    References: Brown et al., arXiv:1712.09665.
    """

    Settings = PatchSettings
    positional = ()
    norm = "patch"
    targeted_only = True

    def pixels(self, x: Tensor) -> int:
        """The patch side in pixels for images like x."""
        return max(1, round(self.size * min(x.shape[-2:])))

    def placements(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Random affine maps, one per image of x."""
        return random_placements(len(x), self.pixels(x), tuple(x.shape[-2:]), self.scale,
                                 self.rotation, generator, x)

    def fit(self, model: Model, x: Tensor, target: int, *,
            generator: torch.Generator | None = None) -> Patch:
        """Train a patch that makes the model predict ``target`` on the images x.

        Shape: x N x C x H x W in [0, 1]; target a class index.
        """
        check_images(x)
        check_eval_mode(model)
        with torch.no_grad():
            k = model(x[:1]).shape[1]
        if not 0 <= int(target) < k:
            raise LabelError(f"target class must lie in [0, {k}), got {target}")
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        t = torch.full((len(x),), int(target), dtype=torch.long, device=x.device)
        patches, mask = self._train(model, x.detach(), t, generator)
        with torch.no_grad():
            xa, _ = paste(x, patches[0], mask, self.placements(x, generator))
            rate = (model(xa).argmax(1) == int(target)).float().mean().item()
        log.debug("patch for target %d: success %.3f", int(target), rate)
        return Patch(patches[0], mask, int(target), rate)

    def _train(self, model: Model, x: Tensor, target: Tensor,
               generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """One patch per distinct target, trained together (each image sees its target's
        patch). Returns (patches T x C x P x P, in the order of ``target.unique()``, mask)."""
        size = self.pixels(x)
        mask = patch_mask(size, self.shape, x)
        classes, which = target.unique(return_inverse=True)
        p = torch.rand(len(classes), x.shape[1], size, size, generator=generator,
                       device=x.device, dtype=x.dtype).requires_grad_(True)
        opt = torch.optim.Adam([p], lr=self.lr)
        for _ in range(self.steps):
            idx = torch.randint(0, len(x), (min(self.batch_size, len(x)),),
                                generator=generator, device=x.device)
            xa, _ = paste(x[idx], p[which[idx]], mask, self.placements(x[idx], generator))
            loss = F.cross_entropy(model(xa), target[idx])  # -E log Pr(target | A(p, x, l, t))
            (p.grad,) = torch.autograd.grad(loss, p)
            opt.step()
            with torch.no_grad():
                p.clamp_(0, 1)
        return p.detach(), mask

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        assert target is not None  # targeted_only: the base chose one
        patches, mask = self._train(model, x, target, generator)
        which = target.unique(return_inverse=True)[1]
        x_adv, masks = paste(x, patches[which], mask, self.placements(x, generator))
        return Crafted(x_adv, info={"mask": masks})
