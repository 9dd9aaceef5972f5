r"""Square Attack: random search with square-shaped updates at the boundary of the ball.

Each iteration proposes, for every example still correctly classified, a new point that
differs from the current best one inside a random square window of side
:math:`s = \sqrt{p \cdot d / c}` pixels, and keeps it only if the loss on the scores
decreases (the margin :math:`z_y - \max_{i \ne y} z_i` untargeted, the cross-entropy of the
target when targeted). One query per example per iteration, which is also its success check.

- Linf: start from vertical stripes of :math:`\pm\epsilon`; a proposal sets the window to
  :math:`\pm\epsilon` per channel (redrawn while it would not change the image).
- L2: start from a grid of "pseudo-Gaussian" bumps of random signs scaled to norm
  :math:`\epsilon`; a proposal moves the perturbation's mass from a second window into the
  first one, shaped as two opposite bumps, keeping :math:`\|\delta\|_2 = \epsilon`.

The fraction :math:`p` of changed pixels halves on the paper's schedule (after 10, 50, 200,
500, 1000, 2000, 4000, 6000 and 8000 of 10,000 iterations, rescaled to the budget).
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from advlab.attacks.base import is_success, register
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle
from advlab.attacks.settings import BallSettings, at_least
from advlab.errors import ThreatModelError
from advlab.losses import objective
from advlab.threat import broadcast_rows, clip_box

_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
             (6000, 128), (8000, 256), (10000, 512))


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """The fraction of pixels changed at iteration ``it`` of ``n_iters`` (paper's schedule)."""
    t = int(it / n_iters * 10000)
    if t <= 10 or t > 10000:
        return p_init
    for bound, div in _SCHEDULE[1:]:
        if t <= bound:
            return p_init / div
    return p_init  # pragma: no cover


class SquareSettings(BallSettings):
    """The settings of :class:`Square` (its docstring): the ball (linf or l2),
    max_queries >= 1, p_init in (0, 1] (default by the norm), loss a known objective or None.
    """

    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")

    max_queries: int = 1_000
    p_init: float | None = None
    loss: str | None = None
    seed: int = 0

    def check(self) -> None:
        super().check()
        at_least(1, max_queries=self.max_queries)
        if self.p_init is None:
            self.resolve("p_init", {"linf": 0.8, "l2": 0.1}[self.norm])
        if not 0 < self.p_init <= 1:
            raise ThreatModelError(f"p_init must be in (0, 1], got {self.p_init}")
        if self.loss is not None:
            objective(self.loss)  # validates the name


@register("square", knowledge="score", goal="both", norm="linf", kind="iterative")
@register("square-l2", knowledge="score", goal="both", norm="l2", kind="iterative",
          defaults={"norm": "l2"})
class Square(BlackBoxAttack):
    r"""Square Attack, Linf or L2, batched with per-example windows, budget and eps.

    Args:
        eps: radius (pixel space); default 0.3 (linf), 2.0 (l2).
        norm: "linf" or "l2".
        max_queries: per-example budget; also the length of the p schedule. The default,
            1,000, is the budget of the paper's query-limited comparisons on MNIST and keeps
            the default run on a few tiny images short.
        p_init: initial fraction of pixels changed; default 0.8 (linf, the paper's MNIST
            value) or 0.1 (l2).
        loss: "margin" or "ce"; default margin when untargeted, ce when targeted (as in the
            paper).
        seed: seeds the random search.

    Shape: x N x C x H x W in [0, 1], y (N,); queries per example in ``AttackResult.queries``.

    References: Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
    black-box adversarial attack via random search", ECCV 2020, arXiv:1912.00049.
    """

    Settings = SquareSettings

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        assert eps is not None
        name = self.loss or ("margin" if target is None else "ce")
        loss_of = objective(name)
        todo = (eps > 0).nonzero().squeeze(1)  # eps = 0: nothing to search, no query
        x_best = x.clone()
        if len(todo) == 0:
            return x_best
        x0, e0 = x[todo], eps[todo]
        y0, t0 = y[todo], None if target is None else target[todo]
        init = self._init_linf if self.norm == "linf" else self._init_l2
        start = init(x0, e0, generator)
        logits = oracle(start, owner=todo)
        x_best[todo] = start
        loss = -loss_of(logits, y0, t0)  # minimised
        best = torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)
        best[todo] = loss
        done = torch.ones(len(x), dtype=torch.bool, device=x.device)
        done[todo] = is_success(logits, y0, t0)
        n_iters = self.max_queries
        for it in range(1, n_iters):
            idx = (~done & (oracle.remaining() >= 1)).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            p = p_selection(self.p_init, it - 1, n_iters)
            propose = self._propose_linf if self.norm == "linf" else self._propose_l2
            x_new = propose(x[idx], x_best[idx], eps[idx], p, generator)
            t = None if target is None else target[idx]
            logits = oracle(x_new, owner=idx)
            loss = -loss_of(logits, y[idx], t)
            better = loss < best[idx]
            x_best[idx[better]] = x_new[better]
            best[idx] = torch.where(better, loss, best[idx])
            done[idx] = is_success(logits, y[idx], t) & better | done[idx]
        return x_best

    # -- Linf ------------------------------------------------------------------------------

    def _init_linf(self, x: Tensor, eps: Tensor, g: torch.Generator) -> Tensor:
        """Vertical stripes: one random sign per (example, channel, column)."""
        n, c, _, w = x.shape
        sign = _signs((n, c, 1, w), g, x)
        return clip_box(x + broadcast_rows(eps, x) * sign)

    def _propose_linf(self, x: Tensor, x_best: Tensor, eps: Tensor, p: float,
                      g: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        s = _side(p * h * w, min(h, w), smallest=1)
        at = _window_pixels(*_corners(n, h, w, s, g, x.device), s, w)[:, None].expand(n, c, -1)
        x_win = x.flatten(2).gather(2, at)  # the window's pixels only: N x C x s*s
        best_win = x_best.flatten(2).gather(2, at)
        e = eps.view(n, 1, 1)
        win = clip_box(x_win + _signs((n, c, 1), g, x) * e)
        redo = torch.arange(n, device=x.device)
        for _ in range(10):  # redraw the signs of a window that would not change the image
            redo = redo[(win[redo] == best_win[redo]).flatten(1).all(1)]
            if len(redo) == 0:
                break
            signs = _signs((n, c, 1), g, x)[redo]  # drawn for all: one stream per seed
            win[redo] = clip_box(x_win[redo] + signs * e[redo])
        return x_best.flatten(2).scatter(2, at, win).view_as(x)

    # -- L2 --------------------------------------------------------------------------------

    def _init_l2(self, x: Tensor, eps: Tensor, g: torch.Generator) -> Tensor:
        """A grid of pseudo-Gaussian bumps, random sign per (example, channel, bump)."""
        n, c, h, w = x.shape
        s = max(h // 5, 1)
        start = max((h - 5 * s) // 2, 0)
        delta = torch.zeros_like(x)
        for top in (start + k * s for k in range(h // s)):
            for left in (start + k * s for k in range(w // s)):
                if top >= h or left >= w:
                    continue
                bump = _meta_bump(s, n, g, x)[:, None, : h - top, : w - left]
                delta[:, :, top:top + s, left:left + s] += bump * _signs((n, c, 1, 1), g, x)
        return clip_box(x + delta * broadcast_rows(eps / _norm(delta), x))

    def _propose_l2(self, x: Tensor, x_best: Tensor, eps: Tensor, p: float,
                    g: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        s = _side(p * h * w, min(h, w), smallest=3)
        if s % 2 == 0 and s < min(h, w):
            s += 1
        m1 = _windows(n, h, w, s, g, x.device)[:, None]
        m2 = _windows(n, h, w, s, g, x.device)[:, None]
        delta = x_best - x
        win_norm = _chan_norm(delta * m1)  # N x C x 1 x 1
        img_norm = broadcast_rows(_norm(delta), x)
        both_norm = _chan_norm(delta * (m1 | m2))
        bump = _place(_meta_bump(s, n, g, x), m1) * _signs((n, c, 1, 1), g, x)
        new = bump + delta * m1 / (win_norm + 1e-10)
        budget = ((eps[:, None, None, None] ** 2 - img_norm ** 2).clamp_min(0) / c
                  + both_norm ** 2).sqrt()
        new = new / _chan_norm(new).clamp_min(1e-12) * budget
        delta = torch.where(m2, 0.0, delta)
        delta = torch.where(m1, new, delta)
        return clip_box(x + delta * broadcast_rows(eps / _norm(delta), x))


# -- helpers -------------------------------------------------------------------------------


def _signs(shape: tuple[int, ...], g: torch.Generator, like: Tensor) -> Tensor:
    r = torch.randint(0, 2, shape, generator=g, device=like.device)
    return (2 * r - 1).to(like.dtype)


def _side(area: float, limit: int, smallest: int) -> int:
    """Window side round(sqrt(area)), kept in [smallest, limit - 1] (>= 1)."""
    s = max(int(round(math.sqrt(area))), smallest)
    return max(1, min(s, limit - 1 if limit > 1 else 1))


def _corners(n: int, h: int, w: int, s: int, g: torch.Generator,
             device: torch.device) -> tuple[Tensor, Tensor]:
    """The top-left corner (rows (N,), columns (N,)) of one s x s window per example, at a
    uniformly random position."""
    top = torch.randint(0, h - s + 1, (n,), generator=g, device=device)
    left = torch.randint(0, w - s + 1, (n,), generator=g, device=device)
    return top, left


def _window_pixels(top: Tensor, left: Tensor, s: int, w: int) -> Tensor:
    """N x s*s: the flat indices (row * w + column) of each example's window."""
    k = torch.arange(s, device=top.device)
    rows, cols = top[:, None] + k, left[:, None] + k
    return (rows[:, :, None] * w + cols[:, None, :]).flatten(1)


def _windows(n: int, h: int, w: int, s: int, g: torch.Generator,
             device: torch.device) -> Tensor:
    """bool N x H x W: one s x s window per example at a uniformly random position."""
    top, left = _corners(n, h, w, s, g, device)
    r = torch.arange(h, device=device)[None, :]
    col = torch.arange(w, device=device)[None, :]
    rows = (r >= top[:, None]) & (r < top[:, None] + s)
    cols = (col >= left[:, None]) & (col < left[:, None] + s)
    return rows[:, :, None] & cols[:, None, :]


def _norm(d: Tensor) -> Tensor:
    return d.flatten(1).norm(dim=1).clamp_min(1e-12)


def _chan_norm(d: Tensor) -> Tensor:
    return d.pow(2).sum((2, 3), keepdim=True).sqrt()


def _bump_rect(a: int, b: int) -> Tensor:
    """An a x b rectangle of nested squares of height 1/(k+1)^2, unit L2 norm."""
    out = torch.zeros(a, b, dtype=torch.float64)
    ca, cb = a // 2, b // 2
    for k in range(max(ca, cb) + 1):
        out[max(ca - k, 0):min(ca + k + 1, a), max(cb - k, 0):min(cb + k + 1, b)] += \
            1.0 / (k + 1) ** 2
    n = out.norm()
    return out / n if n > 0 else out


def _meta_bump(s: int, n: int, g: torch.Generator, like: Tensor) -> Tensor:
    """N x s x s: a positive bump over a negative one, unit norm, randomly transposed."""
    top = _bump_rect(s // 2, s)
    bottom = -_bump_rect(s - s // 2, s)
    pert = torch.cat([top, bottom])
    pert = (pert / pert.norm()).to(device=like.device, dtype=like.dtype)
    flip = torch.randint(0, 2, (n, 1, 1), generator=g, device=like.device).bool()
    return torch.where(flip, pert.T, pert)


def _place(patch: Tensor, mask: Tensor) -> Tensor:
    """Put each example's s x s patch (N x s x s) into its window (mask N x 1 x H x W)."""
    n, _, h, w = mask.shape
    s = patch.shape[-1]
    m = mask[:, 0]
    top = m.any(2).float().argmax(1)
    left = m.any(1).float().argmax(1)
    i = (torch.arange(h, device=m.device)[None, :] - top[:, None]).clamp(0, s - 1)
    j = (torch.arange(w, device=m.device)[None, :] - left[:, None]).clamp(0, s - 1)
    b = torch.arange(n, device=m.device)[:, None, None]
    full = patch[b, i[:, :, None], j[:, None, :]]
    return (full * m)[:, None]
