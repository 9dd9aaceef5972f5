r"""AutoZOOM: zeroth-order optimisation of a C&W-style loss in a reduced space.

The perturbation is searched in a space of dimension :math:`d' \ll d` and mapped to the image
by :math:`D`: :math:`x = \mathrm{clip}_{[0,1]}(x_0 + D(w))`, where D is a bilinear upsampling
of a reduced-resolution image (AutoZOOM-BiLIN, the default) or the decoder of an autoencoder
trained on unlabelled images (AutoZOOM-AE; :func:`train_autoencoder`). The loss is

.. math::  f(w) = \|x - x_0\|_2^2 + c \cdot \max\{\log p_y(x) - \max_{j \ne y}
           \log p_j(x), -\kappa\}

(untargeted; targeted: :math:`\max\{\max_{j \ne t} \log p_j - \log p_t, -\kappa\}`), and
its gradient is estimated from scores only by *random gradient estimation*, averaged over q
random unit directions :math:`u_j` of the reduced space:

.. math::  \hat g = \frac{b}{q} \sum_{j=1}^q \frac{f(w + \beta u_j) - f(w)}{\beta}\, u_j,
           \qquad b = d',\ \beta = 1/d',

which costs q + 1 queries; Adam steps on :math:`\hat g`. *Adaptive random gradient
estimation*: q = 1 until the first success (fast exploration), then ``q_post`` (sharper
estimates to shrink the distortion), with Adam's moments reset. *Adaptive dimension*: an
example still not fooled after ``dim_patience`` iterations doubles the resolution of its
reduced space (up to the full image). The constant c follows C&W's schedule every
``const_every`` iterations (x10 until a success, then a binary search). Every queried image
is checked on its scores, and the smallest adversarial one is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import optim
from advlab.attacks.base import Crafted, Model, is_success, register
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle, as_oracle
from advlab.attacks.minnorm import ScoreRun, cw_margin
from advlab.attacks.settings import Settings, at_least, positive
from advlab.errors import ThreatModelError
from advlab.optim import RowAdam
from advlab.threat import broadcast_rows, clip_box
from advlab.validation import check_images

# ----------------------------------------------------------------------------- autoencoder


class Autoencoder(nn.Module):
    """A small convolutional autoencoder for C x H x W images in [0, 1].

    Encoder: conv(C, w, 3, stride 2)-ReLU-conv(w, k, 3, stride 2), a latent of k channels at
    a quarter of the resolution (7 x 7 for MNIST). Decoder: transposed convs back up,
    resized to H x W, with a sigmoid.
    """

    def __init__(self, shape: tuple[int, int, int], latent_channels: int = 4,
                 width: int = 16) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.encoder = nn.Sequential(
            nn.Conv2d(c, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, latent_channels, 3, stride=2, padding=1))
        self.decoder_net = nn.Sequential(
            nn.ConvTranspose2d(latent_channels, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, stride=2, padding=1))
        self.latent_shape = (latent_channels, (h + 3) // 4, (w + 3) // 4)

    def decode(self, z: Tensor) -> Tensor:
        out = self.decoder_net(z)
        if out.shape[-2:] != self.shape[1:]:
            out = F.interpolate(out, size=self.shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(out)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encoder(x))


def train_autoencoder(x: Tensor, *, latent_channels: int = 4, width: int = 16,
                      epochs: int = 20, batch_size: int = 128, lr: float = 2e-3,
                      seed: int = 0) -> Autoencoder:
    """Train an :class:`Autoencoder` on unlabelled images (mean squared reconstruction error).

    Deterministic by ``seed``: weights and shuffling come from a torch.Generator and the
    global RNG is left as it was.

    Args:
        x: unlabelled images N x C x H x W in [0, 1].
        latent_channels, width: the architecture.
        epochs, batch_size, lr: Adam training.
        seed: the randomness.

    Returns:
        the trained autoencoder in eval mode.

    References: Tu et al. 2019 (AutoZOOM), arXiv:1805.11770, Section 3.2.
    """
    check_images(x)
    if min(latent_channels, width, epochs, batch_size) < 1 or lr <= 0:
        raise ThreatModelError("latent_channels, width, epochs, batch_size >= 1 and lr > 0 "
                               "are required")
    g = torch.Generator(device=x.device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        ae = Autoencoder(tuple(x.shape[1:]), latent_channels, width)
    ae = ae.to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        for p in ae.parameters():
            bound = 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.0
            p.copy_((2 * torch.rand(p.shape, generator=g, device=x.device, dtype=x.dtype) - 1)
                    * bound)
    x = x.detach()
    optim.fit(list(ae.parameters()), lambda s: F.mse_loss(ae(x[s.idx]), x[s.idx]), len(x),
              epochs=epochs, batch_size=batch_size, lr=lr, generator=g)
    return ae.eval()


# ----------------------------------------------------------------------------- the attack


@dataclass
class _Space:
    """The search variables: z (N x C' x h x w, each example's level in the top-left block),
    their Adam state and each example's level of the reduced space."""

    z: Tensor
    adam: RowAdam
    level: Tensor


class AutoZOOMSettings(Settings):
    """The settings of :class:`AutoZOOM` (its docstring): max_queries >= 2; q_post,
    const_every >= 1; reduced in (0, 1]; lr, init_const > 0; kappa >= 0; dim_patience >= 1
    or None."""

    max_queries: int = 1_000
    reduced: float = 0.5
    autoencoder: Autoencoder | None = None
    q_post: int = 4
    lr: float = 0.02
    init_const: float = 1.0
    const_every: int = 100
    kappa: float = 0.0
    dim_patience: int | None = 100
    seed: int = 0

    def check(self) -> None:
        at_least(2, max_queries=self.max_queries)
        at_least(1, q_post=self.q_post, const_every=self.const_every,
                 dim_patience=self.dim_patience)
        if not 0 < self.reduced <= 1:
            raise ThreatModelError(f"reduced must lie in (0, 1], got {self.reduced}")
        positive(lr=self.lr, init_const=self.init_const)
        at_least(0, kappa=self.kappa)


@register("autozoom", knowledge="score", goal="both", norm="l2", kind="optimization",
          bounded=False)
class AutoZOOM(BlackBoxAttack):
    r"""AutoZOOM (L2, minimum-norm), bilinear reduced space or an autoencoder's latent space.

    Args:
        max_queries: per-example budget; default 1,000 (the search keeps shrinking the
            distortion until the budget is spent; it keeps a default run on a few tiny images
            short).
        reduced: side of the reduced space as a fraction of the image's (0.5: 14 x 14 for
            MNIST).
        autoencoder: an :class:`Autoencoder` (from :func:`train_autoencoder`) whose decoder
            maps the search variable to the perturbation, :math:`D(w) = dec(w) - dec(0)`;
            None for the bilinear space.
        q_post: random directions per estimate after the first success (q = 1 before).
        lr: Adam's step size in the reduced space.
        init_const: the first c; ``const_every`` iterations between updates of c.
        kappa: confidence margin of the loss.
        dim_patience: iterations without success before the bilinear space doubles its
            resolution (None: fixed dimension).
        seed: seeds the random directions.

    Shape: x N x C x H x W in [0, 1], y (N,); ``AttackResult.queries`` per example,
    ``info["first_success_queries"]`` (N,) the queries to the first adversarial image.

    References: Tu, Ting, Chen, Liu, Zhang, Yi, Hsieh & Cheng, "AutoZOOM: autoencoder-based
    zeroth order optimization method for attacking black-box neural networks", AAAI 2019,
    arXiv:1805.11770.
    """

    Settings = AutoZOOMSettings
    positional = ()
    norm = "l2"

    # -- the map D from the search space to the perturbation --------------------------------

    def _levels(self, h: int, w: int) -> list[tuple[int, int]]:
        """The reduced resolutions, coarse to full (one level with an autoencoder)."""
        if self.autoencoder is not None:
            return [tuple(self.autoencoder.latent_shape[1:])]
        sides = [(max(1, round(h * self.reduced)), max(1, round(w * self.reduced)))]
        while self.dim_patience is not None and sides[-1] != (h, w):
            sh, sw = sides[-1]
            sides.append((min(h, 2 * sh), min(w, 2 * sw)))
        return sides

    def _decode(self, z: Tensor, shape: torch.Size) -> Tensor:
        """D(z): the perturbation N x C x H x W of search variables z."""
        if self.autoencoder is not None:
            with torch.no_grad():
                zero = self.autoencoder.decode(torch.zeros_like(z[:1]))
                return self.autoencoder.decode(z) - zero
        if z.shape[-2:] == shape[-2:]:
            return z
        return F.interpolate(z, size=tuple(shape[-2:]), mode="bilinear", align_corners=False)

    # -- the loop ---------------------------------------------------------------------------

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        """As :meth:`BlackBoxAttack.perturb`, adding ``info["first_success_queries"]`` (N,):
        the queries spent when the first adversarial image was found (-1: never)."""
        oracle = as_oracle(model, self.access, self.max_queries)
        if oracle.access != "scores":
            raise ThreatModelError("AutoZOOM needs score access; the oracle gives labels only")
        oracle.reset(len(x), x.device)
        first = torch.full((len(x),), -1, dtype=torch.int64, device=x.device)
        x_adv = self._search(oracle, x, y, target, generator, first)
        return Crafted(x_adv, queries=oracle.counts.clone(),
                       info={"budget_exhausted": oracle.exhausted(),
                             "first_success_queries": first})

    def _search(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
                generator: torch.Generator, first: Tensor) -> Tensor:
        n, (c, h, w) = len(x), x.shape[1:]
        levels = self._levels(h, w)
        zc = self.autoencoder.latent_shape[0] if self.autoencoder is not None else c
        z = torch.zeros((n, zc, max(s[0] for s in levels), max(s[1] for s in levels)),
                        device=x.device, dtype=x.dtype)
        space = _Space(z, RowAdam.like(z, self.lr), torch.zeros(n, dtype=torch.int64,
                                                                device=x.device))
        run = ScoreRun.start(oracle, x, y, target, self.init_const, generator)
        since = torch.zeros(n, dtype=torch.int64, device=x.device)
        q = torch.ones(n, dtype=torch.int64, device=x.device)
        it = 0
        while True:
            it += 1
            room = oracle.remaining() - 1
            live = (room >= 1) & (run.best.norm > 0)  # x adversarial: nothing to shrink
            if not live.any():
                break
            q_now = torch.minimum(q, room.clamp_min(0))
            for lv, (sh, sw) in enumerate(levels):
                rows = (live & (space.level == lv)).nonzero().squeeze(1)
                if len(rows):
                    self._step(run, space, rows, sh, sw, q_now[rows])
            found = run.best.found
            first[found & (first < 0)] = oracle.counts[found & (first < 0)]
            switch = found & (q == 1)  # first success: sharper estimates, fresh Adam
            q[switch] = self.q_post
            space.adam.reset(switch)
            since = torch.where(found, 0, since + 1)
            if self.dim_patience is not None:
                grow = live & ~found & (since >= self.dim_patience) & \
                    (space.level < len(levels) - 1)
                for i in grow.nonzero().squeeze(1).tolist():
                    self._refine(space, i, levels[space.level[i]], levels[space.level[i] + 1])
                space.level[grow] += 1
                since[grow] = 0
            if it % self.const_every == 0:  # C&W's schedule on the successes of the stage
                run.next_constants()
        return run.best.x

    def _step(self, run: ScoreRun, space: _Space, rows: Tensor, sh: int, sw: int,
              q: Tensor) -> None:
        """One random-gradient-estimate Adam step for the examples ``rows`` at one level
        (reduced space sh x sw, q directions each)."""
        k, block = len(rows), (rows, slice(None), slice(0, sh), slice(0, sw))
        zr = space.z[block]
        dim = zr[0].numel()
        beta = 1.0 / dim
        qmax = int(q.max())
        u = torch.randn((k, qmax, *zr.shape[1:]), generator=run.generator, device=zr.device,
                        dtype=zr.dtype)
        u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12)[:, :, None, None, None]
        probes = torch.cat([zr[:, None], zr[:, None] + beta * u], 1)        # K x (1+q) x ...
        use = torch.arange(qmax + 1, device=zr.device)[None, :] <= q[:, None]  # K x (1+q)
        owner = rows[:, None].expand(-1, qmax + 1)[use]
        x0 = run.x[owner]
        imgs = clip_box(x0 + self._decode(probes[use], x0.shape))
        logits = run.oracle(imgs, owner=owner)
        yo, to = run.y[owner], None if run.target is None else run.target[owner]
        l2sq = (imgs - x0).flatten(1).pow(2).sum(1)
        f = l2sq + run.search.c[owner] * cw_margin(logits, yo, to, self.kappa, log_probs=True)
        adv = is_success(logits, yo, to)
        run.hit[owner[adv]] = True
        run.best.update(owner, imgs, l2sq.sqrt(), adv)
        fk = torch.full((k, qmax + 1), float("nan"), device=zr.device, dtype=zr.dtype)
        fk[use] = f
        diff = (fk[:, 1:] - fk[:, :1]) / beta                                 # K x q
        diff = torch.where(use[:, 1:], diff, torch.zeros_like(diff))
        grad = dim * (diff[:, :, None, None, None] * u).sum(1) / \
            broadcast_rows(q.clamp_min(1).to(zr.dtype), zr)
        space.z[block] = space.adam.step(zr, grad, block)

    @staticmethod
    def _refine(space: _Space, i: int, old: tuple[int, int], new: tuple[int, int]) -> None:
        """Move example i to a finer reduced space (same perturbation, upsampled; fresh Adam)."""
        (oh, ow), (nh, nw) = old, new
        block = space.z[i:i + 1, :, :oh, :ow]
        space.z[i:i + 1, :, :nh, :nw] = F.interpolate(block, size=(nh, nw), mode="bilinear",
                                                      align_corners=False)
        space.adam.reset(torch.tensor([i], device=space.z.device))
