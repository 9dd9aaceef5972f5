r"""ZOO: zeroth-order optimisation of the Carlini-Wagner L2 objective from scores only.

(Not the model zoo: that is :mod:`advlab.zoo`.)

The attack minimises, over a perturbation variable :math:`w`, the C&W objective on the
log-scores :math:`\log F(x')` (so no softmax saturation; their differences are the logit
differences)

.. math::  L(w) = \|x'(w) - x\|_2^2 + c\, f(x'(w)),\qquad
           f = \max\big(\log F(x')_y - \max_{i \ne y} \log F(x')_i,\ -\kappa\big)

(targeted: :math:`f = \max(\max_{i \ne t} \log F(x')_i - \log F(x')_t, -\kappa)`), one
coordinate at a time. For each of ``coords`` randomly chosen coordinates :math:`e_i`, the
lecture's symmetric difference gives the partial derivative (and the second derivative for
Newton's method)

.. math::  \hat g_i = \frac{L(w + h e_i) - L(w - h e_i)}{2h},\qquad
           \hat h_i = \frac{L(w + h e_i) - 2 L(w) + L(w - h e_i)}{h^2},

all ``2 * coords + 1`` points of all examples evaluated in batched queries. The coordinate
then takes an ADAM step (moments and bias correction kept per coordinate) or a Newton step
:math:`-\eta\, \hat g_i / \hat h_i`. A binary search over the constant :math:`c` finds the
smallest perturbation per example (as in C&W); the best adversarial point seen is returned
(the clean image where none was found).

Dimension reduction: with ``hierarchy`` the variable :math:`w` starts at a reduced resolution
(upsampled bilinearly to the image) and is upsampled to the next resolution every
``resize_every`` iterations; with ``importance`` the coordinates of the new resolution are
sampled with probability proportional to the max-pooled :math:`|w|` of the previous one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.attacks.base import is_success, register
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle
from advlab.attacks.minnorm import ScoreRun, cw_margin
from advlab.attacks.settings import Settings, at_least, one_of, positive
from advlab.errors import ThreatModelError
from advlab.optim import RowAdam
from advlab.threat import clip_box

SOLVERS = ("adam", "newton")
ROWS_PER_QUERY = 4096  # images per oracle call (bounds the model's activation memory)


@dataclass
class _State:
    """Per-example state of one binary-search step (never stored on the attack)."""

    w: Tensor  # N x C x h x w, the optimisation variable at the current resolution
    adam: RowAdam  # N x d moments and step counts, per coordinate
    prob: Tensor  # N x d, coordinate sampling probabilities


class ZOOSettings(Settings):
    """The settings of :class:`ZOO` (its docstring): solver adam or newton; coords,
    binary_search_steps, max_iter, resize_every >= 1; h, lr, initial_const > 0;
    confidence >= 0; hierarchy increasing sides >= 1; max_queries >= 3 or None."""

    solver: str = "adam"
    coords: int = 128
    h: float = 1e-4
    lr: float = 0.01
    initial_const: float = 1.0
    binary_search_steps: int = 9
    max_iter: int = 1000
    abort_early: bool = True
    confidence: float = 0.0
    use_tanh: bool = False
    hierarchy: tuple[int, ...] = ()
    resize_every: int = 200
    importance: bool = True
    beta1: float = 0.9
    beta2: float = 0.999
    max_queries: int | None = 5_000
    seed: int = 0

    def check(self) -> None:
        one_of("ZOO solver", self.solver, SOLVERS)
        at_least(1, coords=self.coords, binary_search_steps=self.binary_search_steps,
                 max_iter=self.max_iter, resize_every=self.resize_every)
        positive(h=self.h, lr=self.lr, initial_const=self.initial_const)
        at_least(0, confidence=self.confidence)
        at_least(3, max_queries=self.max_queries)
        hierarchy = tuple(self.hierarchy)
        if any(s < 1 for s in hierarchy) or list(hierarchy) != sorted(hierarchy):
            raise ThreatModelError(f"hierarchy must be increasing sides >= 1, got {hierarchy}")
        self.resolve("hierarchy", hierarchy)


@register("zoo-attack", knowledge="score", goal="both", norm="l2", kind="optimization",
          bounded=False)
class ZOO(BlackBoxAttack):
    r"""ZOO-ADAM / ZOO-Newton, minimum-norm L2, untargeted or targeted, batched.

    Args:
        solver: "adam" (coordinate ADAM) or "newton" (coordinate Newton).
        coords: coordinates estimated per iteration (``2 * coords + 1`` queries per example).
        h: finite-difference step.
        lr: step size of the coordinate updates.
        initial_const: first value of the constant c.
        binary_search_steps: steps of the binary search over c.
        max_iter: iterations per binary-search step.
        abort_early: stop an example's step when its loss has not decreased by 0.01% over
            ``max_iter // 10`` iterations.
        confidence: kappa, the margin demanded by f.
        use_tanh: optimise in tanh space, :math:`x' = (\tanh(\mathrm{atanh}(2x - 1) + w) + 1)/2`,
            as C&W; off by default: the pixels at 0 or 1 (most of MNIST) then have a
            derivative of order 1e-6 that float32 finite differences cannot see, so the
            variable is the perturbation itself, kept in the box.
        hierarchy: sides of the reduced resolutions of w, smallest first (e.g. (14,) for
            28 x 28 images); empty for none.
        resize_every: iterations at each reduced resolution.
        importance: importance sampling of coordinates after each upsampling.
        beta1, beta2: ADAM's decay rates.
        max_queries: per-example budget (success checks included); an example stops when it
            cannot pay for three queries. The default, 5,000, keeps the default run on a
            few tiny images short; attacks on MNIST want 10^5 or more.
        seed: seeds the coordinate sampling.

    Shape: x N x C x H x W in [0, 1], y (N,); queries per example in ``AttackResult.queries``.

    References: Chen, Zhang, Sharma, Yi & Hsieh, "ZOO: zeroth order optimization based
    black-box attacks to deep neural networks without training substitute models", AISec
    2017, arXiv:1708.03999. Carlini & Wagner, "Towards evaluating the robustness of neural
    networks", IEEE S&P 2017, arXiv:1608.04644.
    """

    Settings = ZOOSettings
    positional = ()
    norm = "l2"

    # -- the binary search -----------------------------------------------------------------

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        run = ScoreRun.start(oracle, x, y, target, self.initial_const, generator,
                             torch.float64)
        for _ in range(self.binary_search_steps):
            self._search(run)
            run.next_constants()
            if (oracle.remaining() < 3).all():
                break
        return run.best.x

    def _search(self, run: ScoreRun) -> None:
        """One binary-search step from w = 0: coordinate descent for ``max_iter`` iterations.
        Updates the best points and ``run.hit``."""
        x, n = run.x, len(run.x)
        sides = [*[s for s in self.hierarchy if s < x.shape[2]], x.shape[2]]
        state = self._fresh(x, sides[0], None)
        running = run.best.norm > 0  # a clean input already adversarial has nothing to shrink
        prev = torch.full((n,), float("inf"), device=x.device, dtype=torch.float64)
        abort_every = max(1, self.max_iter // 10)
        level = 0
        for it in range(self.max_iter):
            if level + 1 < len(sides) and it == (level + 1) * self.resize_every:
                level += 1
                state = self._fresh(x, sides[level], state.w)
            idx = (running & (run.oracle.remaining() >= 3)).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            loss0 = self._iterate(run, state, idx)
            running &= run.best.norm > 0  # the clean input is adversarial: nothing to shrink
            if self.abort_early and it % abort_every == 0:
                stuck = loss0 > prev[idx] * 0.9999
                running[idx[stuck]] = False
                prev[idx] = loss0

    def _fresh(self, x: Tensor, side: int, previous: Tensor | None) -> _State:
        """State at resolution ``side``: w = 0, or the previous w upsampled (new moments);
        importance probabilities from the previous |w| when there is one."""
        n, c, hh, ww = x.shape
        size = (side, max(1, round(side * ww / hh)))
        if previous is None:
            w = torch.zeros(n, c, *size, device=x.device, dtype=x.dtype)
        else:
            w = F.interpolate(previous, size=size, mode="bilinear", align_corners=False)
        d = w[0].numel()
        adam = RowAdam.like(w.view(n, d), self.lr, per_entry=True, b1=self.beta1,
                            b2=self.beta2)
        prob = torch.full((n, d), 1.0 / d, device=x.device, dtype=x.dtype)
        if self.importance and previous is not None:
            k = max(1, previous.shape[2] // 8)
            pooled = F.max_pool2d(previous.abs(), k, k, ceil_mode=True)
            pooled = F.interpolate(pooled, size=size, mode="nearest").flatten(1)
            total = pooled.sum(1, keepdim=True)
            share = torch.where(total > 0, pooled / total.clamp_min(1e-30), prob)
            prob = 0.99 * share + 0.01 * prob  # keep every coordinate reachable
        return _State(w, adam, prob)

    # -- one iteration ---------------------------------------------------------------------

    def _iterate(self, run: ScoreRun, s: _State, idx: Tensor) -> Tensor:
        """Estimate ``coords`` partial derivatives per example of idx, update them, record
        successes at the current point. Returns the loss L(w) of each example (float64)."""
        k = min(self.coords, s.w[0].numel())
        per_row = torch.clamp((run.oracle.remaining()[idx] - 1) // 2, max=k)  # >= 1 here
        pick = torch.multinomial(s.prob[idx], k, replacement=False, generator=run.generator)
        use = torch.arange(k, device=run.x.device)[None, :] < per_row[:, None]
        chunk = max(1, ROWS_PER_QUERY // (2 * k + 1))
        return torch.cat([self._chunk(run, s, idx[a:a + chunk], pick[a:a + chunk],
                                      use[a:a + chunk]) for a in range(0, len(idx), chunk)])

    def _chunk(self, run: ScoreRun, s: _State, idx: Tensor, pick: Tensor, use: Tensor) -> Tensor:
        """The 2k + 1 queries of each example of idx (k coordinates ``pick``, those in ``use``)
        and the coordinate steps. Returns L(w) of each example."""
        x, (m, k) = run.x, pick.shape
        x0 = x[idx]
        images = self._rows(x0, s.w[idx], pick, use)  # m x (2k + 1) x C x H x W
        keep = torch.cat([torch.ones(m, 1, dtype=torch.bool, device=x.device), use, use], 1)
        flat = images.flatten(2)
        rows, owner = flat.flatten(0, 1), idx.repeat_interleave(2 * k + 1)
        if not keep.all():  # a short budget: query only the probes in use
            rows, owner = rows[keep.flatten()], owner[keep.flatten()]
        scores = run.oracle(rows.view(len(rows), *x.shape[1:]), owner=owner)
        # ||x' - x||^2 of every row from the center's, exactly: the probes differ from it by
        # O(h) in a few pixels, so the difference is summed on its own (float32 is enough)
        e0 = flat[:, 0] - x0.flatten(1)
        diff = flat[:, 1:] - flat[:, :1]
        l2sq = torch.cat([e0.double().pow(2).sum(1, keepdim=True),
                          e0.double().pow(2).sum(1, keepdim=True)
                          + (diff * (2 * e0[:, None] + diff)).sum(2).double()], 1)
        t = None if run.target is None else run.target[owner]
        f = torch.zeros(m, 2 * k + 1, device=x.device, dtype=torch.float64)
        f[keep] = cw_margin(scores.double(), run.y[owner], t, self.confidence, log_probs=True)
        loss = l2sq + run.search.c[idx][:, None] * f
        first = torch.cat([keep.new_zeros(1, dtype=torch.long),  # each center's row
                           keep.sum(1).cumsum(0)[:-1]])
        ok = is_success(scores[first], run.y[idx], None if run.target is None else
                        run.target[idx])
        run.hit[idx] |= ok
        run.best.update(idx, images[:, 0], l2sq[:, 0].sqrt(), ok)
        lp, lm, l0 = loss[:, 1:k + 1], loss[:, k + 1:], loss[:, :1]
        grad = ((lp - lm) / (2 * self.h)).to(x.dtype)
        hess = ((lp - 2 * l0 + lm) / self.h ** 2).to(x.dtype)
        self._update(s, idx, pick, use, grad, hess, x)
        return loss[:, 0]

    def _rows(self, x: Tensor, w: Tensor, pick: Tensor, use: Tensor) -> Tensor:
        """The images x'(w), x'(w + h e_i), x'(w - h e_i) for the picked coordinates
        (a probe not in use repeats the center). Shape: m x (2k + 1) x C x H x W."""
        m, k = pick.shape
        pre = self._pre(x) + self._up(w, x)  # before the squashing map: m x C x H x W
        step = torch.where(use, self.h, 0.0).to(x.dtype)
        if w.shape[2:] == x.shape[2:]:  # full resolution: e_i is one pixel
            probe = torch.zeros(m, k, pre[0].numel(), device=x.device, dtype=x.dtype)
            probe.scatter_(2, pick[:, :, None], step[:, :, None])
        else:  # reduced resolution: e_i's upsampled footprint
            onehot = torch.zeros(m * k, w[0].numel(), device=x.device, dtype=x.dtype)
            onehot.scatter_(1, pick.reshape(-1, 1), step.reshape(-1, 1))
            probe = self._up(onehot.view(m * k, *w.shape[1:]), x).reshape(m, k, -1)
        center = pre.flatten(1)[:, None]
        rows = torch.cat([center, center + probe, center - probe], 1)
        return self._squash(rows).view(m, 2 * k + 1, *x.shape[1:])

    def _pre(self, x: Tensor) -> Tensor:
        return torch.atanh((2 * x - 1) * (1 - 1e-6)) if self.use_tanh else x

    def _squash(self, pre: Tensor) -> Tensor:
        return (torch.tanh(pre) + 1) / 2 if self.use_tanh else clip_box(pre)

    def _up(self, w: Tensor, like: Tensor) -> Tensor:
        if w.shape[2:] == like.shape[2:]:
            return w
        return F.interpolate(w, size=like.shape[2:], mode="bilinear", align_corners=False)

    def _update(self, s: _State, idx: Tensor, pick: Tensor, use: Tensor, grad: Tensor,
                hess: Tensor, x: Tensor) -> None:
        """The coordinate step (ADAM or Newton) on the sampled coordinates in use."""
        r = idx[:, None].expand_as(pick)
        r, c, grad, hess = r[use], pick[use], grad[use], hess[use]
        w = s.w.view(len(s.w), -1)
        if self.solver == "adam":
            new = s.adam.step(w[r, c], grad, (r, c))
        else:
            hess = torch.where(hess < 0, torch.ones_like(hess), hess).clamp_min(0.1)
            new = w[r, c] - self.lr * grad / hess
        if not self.use_tanh and s.w.shape[2:] == x.shape[2:]:
            xf = x.view(len(x), -1)[r, c]
            new = torch.maximum(torch.minimum(new, 1 - xf), -xf)  # keep x + w in the box
        w[r, c] = new
