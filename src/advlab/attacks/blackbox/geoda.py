r"""GeoDA: a label-only L2 attack that treats the decision boundary near a boundary point as
a hyperplane and estimates its normal from random low-frequency probes.

From a boundary point :math:`x_B` (a binary search between x and a verified adversarial
start), each iteration t

1. draws :math:`N_t` probes :math:`\eta_i \sim \mathcal N(0, I)` in the subspace of the
   lowest ``sub_dim`` x ``sub_dim`` DCT frequencies of each channel,
   :math:`\eta_i = D_H^\top Z_i D_W` (:math:`D` the orthonormal DCT-II, Z the draws in the
   block), and estimates the normal from all probes so far (the boundary near x is nearly
   flat, so every iteration's probes add up),

   .. math::  s_t = s_{t-1} + \sum_{i=1}^{N_t} \big(\phi(x_B + \sigma \eta_i)
              - \bar\phi\big)\, \eta_i, \qquad \hat\xi_t = s_t / \|s_t\|_2,
              \qquad \phi = \pm 1 \text{ (adversarial or not)},

   with HopSkipJump's baseline :math:`\bar\phi` (the mean decision of the iteration's
   probes) subtracted, so that probes that all land on one side (x_B not yet close enough
   to the boundary) add nothing instead of noise;

2. moves to the hyperplane's closest point along the normal, :math:`x + r\hat\xi_t` with
   :math:`r = \langle x_B - x, \hat\xi_t \rangle`, multiplying r by 1.5 until the point is
   adversarial (clipped to [0, 1]), and binary-searches back towards x for the next
   :math:`x_B`; the closest boundary point so far is kept.

The probes are spread over the iterations as :math:`N_t \propto \lambda^{-2t/3}` (``lam`` < 1:
more probes later, where the estimate matters more), after a reserve of queries for the
searches; ART implements the paper's allocation so and also picks T so that :math:`N_0` is 50
to 80, where here T is ``iterations``.

References: Rahmati, Moosavi-Dezfooli, Frossard & Dai, "GeoDA: a geometric framework for
black-box adversarial attacks", CVPR 2020, arXiv:2003.06468.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from advlab.attacks.base import register
from advlab.attacks.blackbox.decision import (
    Decision,
    begin,
    bisect,
    blend,
    check_start,
)
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle
from advlab.attacks.settings import Settings, at_least, positive
from advlab.threat import broadcast_rows, clip_box, lp_norm
from advlab.transforms import dct_matrix

SEARCH = 32  # queries reserved per iteration for the step and the binary search


def allocation(budget: int, iterations: int, lam: float) -> list[int]:
    r"""Probes per iteration, :math:`N_t \propto \lambda^{-2t/3}`, summing to ``budget``."""
    w = torch.tensor([lam ** (-2 * t / 3) for t in range(iterations)], dtype=torch.float64)
    n = torch.floor(budget * w / w.sum()).long()
    n[-1] += budget - int(n.sum())
    return n.tolist()


def low_frequency(m: int, shape: torch.Size | tuple[int, ...], sub_dim: int,
                  g: torch.Generator, like: Tensor) -> Tensor:
    """m Gaussian images (m x C x H x W) in the span of the lowest sub_dim^2 DCT frequencies."""
    c, h, w = shape
    sh, sw = min(sub_dim, h), min(sub_dim, w)
    dh = dct_matrix(h, like.dtype, like.device)[:sh]
    dw = dct_matrix(w, like.dtype, like.device)[:sw]
    z = torch.randn(m, c, sh, sw, generator=g, device=like.device, dtype=like.dtype)
    return dh.T @ z @ dw


class GeoDASettings(Settings):
    """The settings of :class:`GeoDA` (its docstring): max_queries, iterations, sub_dim
    >= 1; sigma and lam > 0; init and init_tries as :func:`~advlab.attacks.blackbox.
    decision.check_start` says."""

    max_queries: int = 1_000
    iterations: int = 10
    sub_dim: int = 10
    sigma: float = 0.0002
    lam: float = 0.6
    init: str = "auto"
    init_tries: int = 100
    seed: int = 0

    def check(self) -> None:
        at_least(1, max_queries=self.max_queries, iterations=self.iterations,
                 sub_dim=self.sub_dim)
        positive(sigma=self.sigma, lam=self.lam)
        check_start(self.init, self.init_tries)


@register("geoda", knowledge="label", goal="both", norm="l2", kind="iterative", bounded=False)
class GeoDA(BlackBoxAttack):
    r"""GeoDA (L2, minimum-norm, label-only; untargeted or targeted), batched.

    Args:
        max_queries: per-example budget.
        iterations: T, normal estimates (the paper chooses T from the budget).
        sub_dim: side of the low-frequency DCT block the probes live in (ART: 10).
        sigma: probe radius (ART: 0.0002; relative to the pixel range [0, 1]).
        lam: lambda of the allocation (0.6, ART's default).
        init: starting points, "auto", "batch" or "noise" (see HopSkipJump).
        init_tries: noise images drawn per example at most.
        seed: seeds the probes and the noise.

    Shape: x N x C x H x W in [0, 1], y (N,); ``AttackResult.queries`` per example.

    References: Rahmati et al., CVPR 2020, arXiv:2003.06468.
    """

    Settings = GeoDASettings
    positional = ()
    norm = "l2"
    access = "labels"

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        s = begin(oracle, x, y, target, self.init, self.init_tries, generator)
        decide, idx, xs, x_adv = s.decide, s.idx, s.x, x.clone()
        if len(idx) == 0:
            return x_adv
        tol = torch.full((len(idx),), min(x[0].numel() ** -1.5, 1e-4), dtype=x.dtype,
                         device=x.device)
        best = s.boundary(tol)
        total = torch.zeros_like(xs)
        left = int(oracle.remaining()[idx].min()) - SEARCH * self.iterations
        for probes in allocation(max(left, 0), self.iterations, self.lam):
            live = (oracle.remaining()[idx] >= probes + SEARCH).nonzero().squeeze(1)
            if len(live) == 0 or probes < 2:
                continue
            total[live] += self._probe(decide, best[live], idx[live], probes, generator)
            normal = total[live] / broadcast_rows(
                lp_norm(total[live], "l2").clamp_min(1e-12), xs[live])
            cand = self._along(decide, xs[live], best[live], normal, idx[live])
            if cand is None:
                continue
            rows, point = cand
            new, _ = bisect(decide, blend(xs[live[rows]], point), idx[live[rows]], point,
                            torch.ones_like(tol[rows]), tol[rows])
            closer = lp_norm(new - xs[live[rows]], "l2") < lp_norm(best[live[rows]]
                                                                   - xs[live[rows]], "l2")
            best[live[rows[closer]]] = new[closer]
        x_adv[idx] = best
        return x_adv

    def _probe(self, decide: Decision, at: Tensor, owner: Tensor, probes: int,
               g: torch.Generator) -> Tensor:
        """sum_i phi(at + sigma eta_i) eta_i at the boundary points ``at`` (probes queries
        each): the direction of the boundary's normal, unnormalised."""
        s_phi_eta, s_eta = torch.zeros_like(at), torch.zeros_like(at)
        s_phi = torch.zeros(len(at), dtype=at.dtype, device=at.device)
        for _ in range(probes):
            eta = low_frequency(len(at), at.shape[1:], self.sub_dim, g, at)
            phi = decide(clip_box(at + self.sigma * eta), owner).to(at.dtype) * 2 - 1
            s_phi_eta += broadcast_rows(phi, eta) * eta
            s_eta += eta
            s_phi += phi
        return s_phi_eta - broadcast_rows(s_phi / probes, at) * s_eta

    def _along(self, decide: Decision, x: Tensor, at: Tensor, normal: Tensor,
               owner: Tensor) -> tuple[Tensor, Tensor] | None:
        """Verified adversarial points x + r normal, r from the hyperplane through ``at``
        grown by 1.5 until adversarial; returns (rows found, their points) or None."""
        r = ((at - x) * normal).flatten(1).sum(1).clamp_min(1e-3)
        point = torch.zeros_like(x)
        ok = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        limit = math.sqrt(x[0].numel())
        for _ in range(SEARCH // 2):
            rows = ((~ok) & (r <= limit) & decide.can_query(owner, SEARCH // 2)).nonzero()
            rows = rows.squeeze(1)
            if len(rows) == 0:
                break
            cand = clip_box(x[rows] + broadcast_rows(r[rows], x[rows]) * normal[rows])
            adv = decide(cand, owner[rows])
            point[rows[adv]], ok[rows[adv]] = cand[adv], True
            r[rows[~adv]] *= 1.5
        rows = ok.nonzero().squeeze(1)
        return (rows, point[rows]) if len(rows) else None
