r"""Pixle: a score-based attack that rearranges a few pixels of the image itself.

Each candidate copies a random rectangle of the *clean* image x, of width
:math:`w \in [w_{lo}, w_{hi}]` and height :math:`h \in [h_{lo}, h_{hi}]` pixels at a uniform
random position (cut at the image border), onto :math:`w h` distinct random destinations of
the current base image :math:`b` ("random" mapping):

.. math::  x'(\pi(p)) = x(p) \quad (p \in \text{patch}), \qquad x'(q) = b(q)
           \text{ elsewhere},

and is scored by the loss :math:`\mathcal L = p_y(x')` (untargeted) or :math:`1 - p_t(x')`
(targeted). Each restart tries ``iterations`` candidates from the same base; at its end the
base becomes the candidate of lowest loss seen so far (random search with restarts). No pixel
value is invented: the result holds only values of x, and an example stops as soon as a
candidate reaches the goal. One query per candidate, plus one for the clean loss.

References: Pomponi, Scardapane & Uncini, "Pixle: a fast and effective black-box attack
based on rearranging pixels", IJCNN 2022, arXiv:2202.02236.
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import is_success, register
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle
from advlab.attacks.settings import Settings, at_least
from advlab.errors import ThreatModelError


def loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """p_y (untargeted) or 1 - p_t (targeted), per row."""
    cls = y if target is None else target
    p = logits.softmax(1).gather(1, cls[:, None]).squeeze(1)
    return p if target is None else 1 - p


def patch_moves(n: int, h: int, w: int, sizes: tuple[int, int, int, int],
                g: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Sources and destinations of one random patch per image (flat pixel indices).

    Args:
        sizes: (w_lo, w_hi, h_lo, h_hi), the patch size range in pixels (inclusive).

    Returns:
        src, dst int64 N x L and valid bool N x L, L = w_hi h_hi: entry j of row i moves
        pixel src[i, j] of x to dst[i, j] where valid (destinations distinct per row).
    """
    w_lo, w_hi, h_lo, h_hi = sizes
    rnd = lambda lo, hi: torch.randint(lo, hi + 1, (n, 1), generator=g, device=device)  # noqa
    pw, ph = rnd(w_lo, w_hi), rnd(h_lo, h_hi)
    c0, r0 = rnd(0, w - 1), rnd(0, h - 1)
    j = torch.arange(w_hi * h_hi, device=device)
    dr, dc = j // w_hi, j % w_hi
    valid = (dr < ph) & (dc < pw) & (r0 + dr < h) & (c0 + dc < w)
    src = ((r0 + dr).clamp(max=h - 1) * w + (c0 + dc).clamp(max=w - 1))
    dst = torch.rand(n, h * w, generator=g, device=device).argsort(1)[:, :w_hi * h_hi]
    return src, dst, valid


def move(x: Tensor, base: Tensor, src: Tensor, dst: Tensor, valid: Tensor) -> Tensor:
    """base with x's pixels at src written to dst (rows where valid); shapes N x C x H x W."""
    n, c = x.shape[:2]
    flat_x, out = x.flatten(2), base.flatten(2).clone()
    take = lambda t, i: t.gather(2, i[:, None].expand(n, c, -1))  # noqa: E731
    vals = torch.where(valid[:, None], take(flat_x, src), take(out, dst))
    out.scatter_(2, dst[:, None].expand(n, c, -1), vals)
    return out.view_as(x)


class PixleSettings(Settings):
    """The settings of :class:`Pixle` (its docstring): patch sizes (lo, hi) with
    1 <= lo <= hi, restarts and iterations >= 1, max_queries >= 1 or None."""

    patch_width: tuple[int, int] = (2, 10)
    patch_height: tuple[int, int] = (2, 10)
    restarts: int = 20
    iterations: int = 10
    max_queries: int | None = None
    seed: int = 0

    def check(self) -> None:
        for name in ("patch_width", "patch_height"):
            size = tuple(getattr(self, name))
            if len(size) != 2 or not 1 <= size[0] <= size[1]:
                raise ThreatModelError(f"{name} needs (lo, hi) with 1 <= lo <= hi, got {size}")
            self.resolve(name, size)
        at_least(1, restarts=self.restarts, iterations=self.iterations,
                 max_queries=self.max_queries)


@register("pixle", knowledge="score", goal="both", norm="l0", kind="iterative",
          bounded=False)
class Pixle(BlackBoxAttack):
    r"""Pixle with the "random" pixel mapping, batched over examples.

    Args:
        patch_width: (lo, hi) patch width in pixels (torchattacks' default: (2, 10)).
        patch_height: (lo, hi) patch height in pixels.
        restarts: rounds; the base moves to the best candidate after each (torchattacks: 20).
        iterations: candidates per round (torchattacks: 10).
        max_queries: per-example budget, or None (restarts x iterations + 1 at most).
        seed: seeds the patches and the mapping.

    Shape: x N x C x H x W in [0, 1], y (N,); ``AttackResult.queries`` per example.

    References: Pomponi, Scardapane & Uncini, IJCNN 2022, arXiv:2202.02236.
    """

    Settings = PixleSettings
    positional = ()
    norm = None

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        sizes = (min(self.patch_width[0], w), min(self.patch_width[1], w),
                 min(self.patch_height[0], h), min(self.patch_height[1], h))
        base, best = x.clone(), x.clone()
        logits = oracle(x)
        best_loss = loss(logits, y, target)
        done = is_success(logits, y, target)
        for _ in range(self.restarts):
            for _ in range(self.iterations):
                live = (~done & (oracle.remaining() >= 1)).nonzero().squeeze(1)
                if len(live) == 0:
                    return best
                src, dst, valid = patch_moves(len(live), h, w, sizes, generator, x.device)
                cand = move(x[live], base[live], src, dst, valid)
                out = oracle(cand, owner=live)
                t = None if target is None else target[live]
                c_loss, ok = loss(out, y[live], t), is_success(out, y[live], t)
                better = (c_loss < best_loss[live]) | ok
                best[live[better]], best_loss[live[better]] = cand[better], c_loss[better]
                done[live[ok]] = True
            base = best.clone()
        return best
