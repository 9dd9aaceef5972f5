r"""SimBA: simple black-box attack, one orthonormal direction at a time.

For the next direction :math:`q` of an orthonormal basis, try
:math:`x - \epsilon q`; keep it if the probability of the true class :math:`p(y \mid x)` drops
(untargeted; targeted: if :math:`p(t \mid x)` rises), else try :math:`x + \epsilon q`, else
move on. Each direction is used at most once, so after T accepted steps
:math:`\|\delta\|_2 \le \epsilon \sqrt{T}`. Bases: the standard (pixel) basis in random order,
or the 2-D DCT basis with low frequencies first (the first ``freq_dims`` x ``freq_dims``
frequencies of every channel in random order, then bands of width ``stride``), where
adversarial directions are denser. The scores of an accepted query are its success check.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from advlab.attacks.base import is_success, register
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle
from advlab.attacks.settings import Settings, at_least, one_of, positive
from advlab.threat import clip_box

BASES = ("pixel", "dct")


class SimBASettings(Settings):
    """The settings of :class:`SimBA` (its docstring): basis pixel or dct, step > 0,
    max_queries >= 1, freq_dims and stride >= 1 or None."""

    basis: str = "pixel"
    step: float = 0.2
    max_queries: int = 2_000
    freq_dims: int | None = None
    stride: int | None = None
    seed: int = 0

    def check(self) -> None:
        one_of("SimBA basis", self.basis, BASES)
        positive(step=self.step)
        at_least(1, max_queries=self.max_queries, freq_dims=self.freq_dims,
                 stride=self.stride)


@register("simba", knowledge="score", goal="both", norm="l2", kind="iterative", bounded=False)
@register("simba-dct", knowledge="score", goal="both", norm="l2", kind="iterative",
          bounded=False, defaults={"basis": "dct"})
class SimBA(BlackBoxAttack):
    r"""SimBA with the pixel basis ("simba") or the low-frequency DCT basis ("simba-dct").

    Args:
        basis: "pixel" or "dct".
        step: the paper's epsilon, the length of each step along a basis vector.
        max_queries: per-example budget (at most 1 + 2 x the number of directions is
            spent). The default, 2,000, covers every direction of a 28 x 28 image.
        freq_dims: side of the lowest-frequency block tried first (dct); default H / 4.
        stride: width of each following frequency band (dct); default freq_dims.
        seed: seeds the order of the directions.

    Shape: x N x C x H x W in [0, 1], y (N,); queries per example in ``AttackResult.queries``.

    References: Guo, Gardner, You, Wilson & Weinberger, "Simple black-box adversarial
    attacks", ICML 2019, arXiv:1905.07121.
    """

    Settings = SimBASettings
    positional = ()
    norm = "l2"

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        order = self._order(n, c, h, w, generator, x.device)  # N x d, direction indices
        dct = _dct_matrix(h, x) if self.basis == "dct" else None
        dct_w = _dct_matrix(w, x) if self.basis == "dct" else None
        cls = y if target is None else target
        sign = 1.0 if target is None else -1.0  # minimise sign * p(cls)
        logits = oracle(x, owner=torch.arange(n, device=x.device))
        best = sign * _prob(logits, cls)
        done = is_success(logits, y, target)
        pert = torch.zeros_like(x)
        for k in range(order.shape[1]):
            idx = (~done & (oracle.remaining() >= 1)).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            q = self._direction(order[idx, k], c, h, w, dct, dct_w, x)
            for s in (-self.step, self.step):  # x - eps q, then x + eps q where that failed
                afford = oracle.remaining()[idx] >= 1
                idx, q = idx[afford], q[afford]
                if len(idx) == 0:
                    break
                cand = clip_box(x[idx] + pert[idx] + s * q)
                out = oracle(cand, owner=idx)
                score = sign * _prob(out, cls[idx])
                better = score < best[idx]
                won = idx[better]
                pert[won] = cand[better] - x[won]
                best[won] = score[better]
                done[won] = is_success(out[better], y[won],
                                       None if target is None else target[won])
                idx, q = idx[~better], q[~better]
        return clip_box(x + pert)

    def _order(self, n: int, c: int, h: int, w: int, g: torch.Generator,
               device: torch.device) -> Tensor:
        """N x (c h w): each example's direction indices in the order they are tried."""
        noise = torch.rand(n, c * h * w, generator=g, device=device)
        if self.basis == "pixel":
            return noise.argsort(1)
        first = self.freq_dims or max(1, h // 4)
        stride = self.stride or first
        u = torch.arange(h, device=device)[:, None].expand(h, w)
        v = torch.arange(w, device=device)[None, :].expand(h, w)
        m = torch.maximum(u, v)
        band = torch.where(m < first, 0, 1 + torch.div(m - first, stride, rounding_mode="floor"))
        key = band.flatten().repeat(c).to(noise.dtype)  # channel-major, like the images
        return (key[None, :] + noise).argsort(1)

    def _direction(self, index: Tensor, c: int, h: int, w: int, dct: Tensor | None,
                   dct_w: Tensor | None, like: Tensor) -> Tensor:
        """Unit-norm basis images (M x C x H x W) for flat direction indices (M,)."""
        m = len(index)
        if dct is None or dct_w is None:
            q = torch.zeros(m, c * h * w, device=like.device, dtype=like.dtype)
            q[torch.arange(m, device=like.device), index] = 1.0
            return q.view(m, c, h, w)
        ch, rest = index // (h * w), index % (h * w)
        u, v = rest // w, rest % w
        img = dct[u][:, :, None] * dct_w[v][:, None, :]  # inverse DCT of a one-hot: M x H x W
        q = torch.zeros(m, c, h, w, device=like.device, dtype=like.dtype)
        q[torch.arange(m, device=like.device), ch] = img
        return q


def _prob(logits: Tensor, cls: Tensor) -> Tensor:
    return logits.softmax(1).gather(1, cls[:, None]).squeeze(1)


def _dct_matrix(n: int, like: Tensor) -> Tensor:
    """The orthonormal DCT-II matrix D (n x n): row k is the k-th cosine, so D^T D = I and the
    image of frequency (u, v) is the outer product of rows u and v."""
    i = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi / n * (i[None, :] + 0.5) * i[:, None]) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(device=like.device, dtype=like.dtype)

