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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import optim
from advlab.attacks.base import Crafted, Model, register
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle, as_oracle
from advlab.errors import ThreatModelError
from advlab.threat import _expand, clip, clip_box
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


def cw_log_loss(logits: Tensor, y: Tensor, target: Tensor | None, kappa: float) -> Tensor:
    """C&W's loss on log-probabilities (ZOO/AutoZOOM), zero (or -kappa) once adversarial."""
    logp = logits.log_softmax(1)
    cls = y if target is None else target
    own = logp.gather(1, cls[:, None]).squeeze(1)
    other = logp.scatter(1, cls[:, None], float("-inf")).amax(1)
    gap = own - other if target is None else other - own
    return clip(gap, lo=-kappa)


@register("autozoom", knowledge="score", goal="both", norm="l2", kind="optimization",
          bounded=False)
class AutoZOOM(BlackBoxAttack):
    r"""AutoZOOM (L2, minimum-norm), bilinear reduced space or an autoencoder's latent space.

    Args:
        max_queries: per-example budget; default 1,000 (the search keeps shrinking the
            distortion until the budget is spent; a default run on 4 tiny 8x8 images takes
            well under a second).
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

    def __init__(self, *, max_queries: int = 1_000, reduced: float = 0.5,
                 autoencoder: Autoencoder | None = None, q_post: int = 4, lr: float = 0.02,
                 init_const: float = 1.0, const_every: int = 100, kappa: float = 0.0,
                 dim_patience: int | None = 100, seed: int = 0) -> None:
        if max_queries < 2 or q_post < 1 or const_every < 1:
            raise ThreatModelError("max_queries >= 2, q_post >= 1 and const_every >= 1 "
                                   "are required")
        if not 0 < reduced <= 1 or lr <= 0 or init_const <= 0 or kappa < 0:
            raise ThreatModelError("reduced in (0, 1], lr > 0, init_const > 0, kappa >= 0 "
                                   "are required")
        if dim_patience is not None and dim_patience < 1:
            raise ThreatModelError(f"dim_patience must be >= 1, got {dim_patience}")
        self.norm, self.eps, self.max_queries = "l2", None, max_queries
        self.reduced, self.autoencoder, self.q_post, self.lr = reduced, autoencoder, q_post, lr
        self.init_const, self.const_every, self.kappa = init_const, const_every, kappa
        self.dim_patience, self.seed = dim_patience, seed

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
        full = (n, zc, max(s[0] for s in levels), max(s[1] for s in levels))
        z = torch.zeros(full, device=x.device, dtype=x.dtype)  # the variable, top-left block
        m, v = torch.zeros_like(z), torch.zeros_like(z)
        t_adam = torch.zeros(n, device=x.device, dtype=x.dtype)
        level = torch.zeros(n, dtype=torch.int64, device=x.device)
        const = torch.full((n,), self.init_const, device=x.device, dtype=x.dtype)
        lower, upper = torch.zeros_like(const), torch.full_like(const, float("inf"))
        best = x.clone()
        best_l2 = torch.full_like(const, float("inf"))
        stage_hit = torch.zeros(n, dtype=torch.bool, device=x.device)
        since = torch.zeros(n, dtype=torch.int64, device=x.device)
        q = torch.ones(n, dtype=torch.int64, device=x.device)
        it = 0
        while True:
            it += 1
            room = oracle.remaining() - 1
            live = (room >= 1) & (best_l2 > 0)  # x itself adversarial: nothing to shrink
            if not live.any():
                break
            q_now = torch.minimum(q, room.clamp_min(0))
            for lv, (sh, sw) in enumerate(levels):
                rows = (live & (level == lv)).nonzero().squeeze(1)
                if len(rows):
                    self._step(oracle, x, y, target, rows, z, m, v, t_adam, sh, sw,
                               q_now[rows], const, best, best_l2, stage_hit, generator)
            found = best_l2 < float("inf")
            first[found & (first < 0)] = oracle.counts[found & (first < 0)]
            switch = found & (q == 1)  # first success: sharper estimates, fresh Adam
            q[switch] = self.q_post
            m[switch], v[switch], t_adam[switch] = 0, 0, 0
            since = torch.where(found, 0, since + 1)
            if self.dim_patience is not None:
                grow = live & ~found & (since >= self.dim_patience) & (level < len(levels) - 1)
                for i in grow.nonzero().squeeze(1).tolist():
                    self._refine(z, m, v, t_adam, i, levels[level[i]], levels[level[i] + 1])
                level[grow] += 1
                since[grow] = 0
            if it % self.const_every == 0:
                self._update_const(const, lower, upper, stage_hit)
        return best

    def _step(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None, rows: Tensor,
              z: Tensor, m: Tensor, v: Tensor, t_adam: Tensor, sh: int, sw: int, q: Tensor,
              const: Tensor, best: Tensor, best_l2: Tensor, stage_hit: Tensor,
              g: torch.Generator) -> None:
        """One random-gradient-estimate Adam step for the examples ``rows`` at one level."""
        k = len(rows)
        zr = z[rows, :, :sh, :sw]
        dim = zr[0].numel()
        beta = 1.0 / dim
        qmax = int(q.max())
        u = torch.randn((k, qmax, *zr.shape[1:]), generator=g, device=z.device, dtype=z.dtype)
        u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12)[:, :, None, None, None]
        probes = torch.cat([zr[:, None], zr[:, None] + beta * u], 1)        # K x (1+q) x ...
        use = torch.arange(qmax + 1, device=z.device)[None, :] <= q[:, None]  # K x (1+q)
        flat = probes[use]
        owner = rows[:, None].expand(-1, qmax + 1)[use]
        x0 = x[owner]
        imgs = clip_box(x0 + self._decode(flat, x0.shape))
        logits = oracle(imgs, owner=owner)
        yo, to = y[owner], None if target is None else target[owner]
        l2sq = (imgs - x0).flatten(1).pow(2).sum(1)
        f = l2sq + const[owner] * cw_log_loss(logits, yo, to, self.kappa)
        self._keep_best(imgs, x0, owner, logits, yo, to, best, best_l2, stage_hit)
        fk = torch.full((k, qmax + 1), float("nan"), device=z.device, dtype=z.dtype)
        fk[use] = f
        diff = (fk[:, 1:] - fk[:, :1]) / beta                                 # K x q
        diff = torch.where(use[:, 1:], diff, torch.zeros_like(diff))
        grad = dim * (diff[:, :, None, None, None] * u).sum(1) / q.clamp_min(1).to(z.dtype)[
            :, None, None, None]
        t = t_adam[rows] + 1
        t_adam[rows] = t
        mr = 0.9 * m[rows, :, :sh, :sw] + 0.1 * grad
        vr = 0.999 * v[rows, :, :sh, :sw] + 0.001 * grad * grad
        m[rows, :, :sh, :sw], v[rows, :, :sh, :sw] = mr, vr
        mhat = mr / _expand(1 - 0.9 ** t, mr)
        vhat = vr / _expand(1 - 0.999 ** t, vr)
        z[rows, :, :sh, :sw] = zr - self.lr * mhat / (vhat.sqrt() + 1e-8)

    @staticmethod
    def _keep_best(imgs: Tensor, x0: Tensor, owner: Tensor, logits: Tensor, y: Tensor,
                   target: Tensor | None, best: Tensor, best_l2: Tensor,
                   stage_hit: Tensor) -> None:
        """Keep, per example, the smallest queried image that the scores call adversarial."""
        pred = logits.argmax(1)
        adv = pred != y if target is None else pred == target
        if not adv.any():
            return
        l2 = (imgs - x0).flatten(1).norm(dim=1)
        l2 = torch.where(adv, l2, torch.full_like(l2, float("inf")))
        stage_hit[owner[adv]] = True
        n = len(best_l2)
        per = torch.full((n,), float("inf"), device=l2.device, dtype=l2.dtype)
        per = per.scatter_reduce(0, owner, l2, reduce="amin")
        better = per < best_l2
        if not better.any():
            return
        # the row achieving the minimum for each improved example
        hit = better[owner] & (l2 == per[owner])
        rows = hit.nonzero().squeeze(1)
        best[owner[rows]] = imgs[rows]
        best_l2[better] = per[better]

    @staticmethod
    def _refine(z: Tensor, m: Tensor, v: Tensor, t_adam: Tensor, i: int,
                old: tuple[int, int], new: tuple[int, int]) -> None:
        """Move example i to a finer reduced space (same perturbation, upsampled)."""
        oh, ow = old
        nh, nw = new
        block = z[i:i + 1, :, :oh, :ow]
        z[i:i + 1, :, :nh, :nw] = F.interpolate(block, size=(nh, nw), mode="bilinear",
                                                align_corners=False)
        m[i], v[i], t_adam[i] = 0, 0, 0

    @staticmethod
    def _update_const(const: Tensor, lower: Tensor, upper: Tensor, hit: Tensor) -> None:
        """C&W's schedule: success -> c down (bisection), failure -> c x 10 or bisection."""
        upper[hit] = torch.minimum(upper[hit], const[hit])
        lower[~hit] = torch.maximum(lower[~hit], const[~hit])
        bounded = upper < float("inf")
        const[:] = torch.where(bounded, (lower + upper) / 2, const * 10)
        hit[:] = False
