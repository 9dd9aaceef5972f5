r"""Shared mechanics of the label-only ("decision-based") attacks: HopSkipJump and Boundary.

A label-only attacker knows only the decision

.. math::  \phi_x(x') = +1 \text{ if } x' \text{ is adversarial (} C(x') \ne y
           \text{, or } C(x') = t \text{)}, \quad -1 \text{ otherwise},

so it works with points it has *verified* to be adversarial: a starting point (random noise,
another image of the batch, or a user-given image) and the points a binary search finds
between the clean x and that start. Everything here is batched over examples, charges each
query to its example through the oracle's ``owner``, and stops an example whose budget is
spent, keeping the last verified adversarial point (so nothing returned is a mere guess).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from advlab.attacks.blackbox.oracle import Oracle
from advlab.attacks.settings import at_least, one_of
from advlab.errors import InputError
from advlab.threat import broadcast_rows, clip_box, lp_norm

INITS = ("auto", "batch", "noise")


def check_start(init: str, init_tries: int) -> None:
    """Validate the starting-point settings of a label-only attack (see
    :func:`starting_points`): init one of :data:`INITS`, init_tries >= 1."""
    one_of("init", init, INITS)
    at_least(1, init_tries=init_tries)


class Decision:
    """The adversarial criterion phi seen through a label oracle.

    Args:
        oracle: the counted oracle (labels, or scores reduced to their argmax).
        y: true labels (N,).
        target: target labels (N,) or None (untargeted).
    """

    def __init__(self, oracle: Oracle, y: Tensor, target: Tensor | None) -> None:
        self.oracle, self.y, self.target = oracle, y, target

    def labels(self, x: Tensor, owner: Tensor) -> Tensor:
        """Top-1 labels of the rows of x, each query charged to ``owner``."""
        out = self.oracle(x, owner=owner)
        return out if self.oracle.access == "labels" else out.argmax(1)

    def adversarial(self, label: Tensor, owner: Tensor) -> Tensor:
        """bool: does ``label`` satisfy the criterion of example ``owner``?"""
        if self.target is None:
            return label != self.y[owner]
        return label == self.target[owner]

    def __call__(self, x: Tensor, owner: Tensor) -> Tensor:
        """bool (M,): phi > 0 for each row (one query per row)."""
        return self.adversarial(self.labels(x, owner), owner)

    def can_query(self, idx: Tensor, k: int = 1) -> Tensor:
        """bool over idx: examples with at least k queries left."""
        return self.oracle.remaining()[idx] >= k


def bisect(decide: Decision, point: Callable[[Tensor, Tensor], Tensor], idx: Tensor,
           high_point: Tensor, high: Tensor, tol: Tensor) -> tuple[Tensor, Tensor]:
    r"""Binary search on a path :math:`\alpha \mapsto p(\alpha)` from x (alpha = 0, not
    adversarial) to a verified adversarial point (alpha = ``high``).

    Args:
        decide: the criterion.
        point: (alpha (M,), rows (M,) positions into idx) -> points M x C x H x W.
        idx: the examples searched (K,).
        high_point: K x C x H x W verified adversarial points at alpha = ``high``.
        high: (K,) their path parameter.
        tol: (K,) stop once high - low <= tol.

    Returns:
        the adversarial point at the final ``high`` (verified by a query, or the starting
        point), and ``high``. Examples stop early when their budget is spent.
    """
    low = torch.zeros_like(high)
    best, high = high_point.clone(), high.clone()
    while True:
        rows = ((high - low > tol) & decide.can_query(idx)).nonzero().squeeze(1)
        if len(rows) == 0:
            return best, high
        mid = (low[rows] + high[rows]) / 2
        cand = point(mid, rows)
        adv = decide(cand, idx[rows])
        high[rows] = torch.where(adv, mid, high[rows])
        low[rows] = torch.where(adv, low[rows], mid)
        best[rows[adv]] = cand[adv]


def blend(x: Tensor, x_adv: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    r"""The L2 path :math:`p(\alpha) = (1 - \alpha) x + \alpha x_{adv}` (rows index x)."""
    return lambda alpha, rows: torch.lerp(x[rows], x_adv[rows], broadcast_rows(alpha, x[rows]))


def clip_path(x: Tensor, x_adv: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    r"""The Linf path :math:`p(\alpha) = \mathrm{clip}(x_{adv}, x - \alpha, x + \alpha)`."""
    def path(alpha: Tensor, rows: Tensor) -> Tensor:
        a = broadcast_rows(alpha, x[rows])
        return torch.minimum(torch.maximum(x_adv[rows], x[rows] - a), x[rows] + a)
    return path


def starting_points(decide: Decision, x: Tensor, clean_label: Tensor, init: str,
                    init_tries: int, generator: torch.Generator,
                    given: Tensor | None = None, norm: str = "l2") -> tuple[Tensor, Tensor]:
    """Verified adversarial starting points for the examples not already adversarial.

    Candidates, in order: a user-given image (one query to verify it), the nearest other image
    of the batch whose (already queried) label satisfies the criterion ("batch"; no extra
    query), and uniform noise images, up to ``init_tries`` per example ("noise", the paper's
    initialisation). ``init="auto"`` uses the batch and then noise.

    Args:
        decide: the criterion.
        x: clean images N x C x H x W.
        clean_label: the oracle's labels of x (N,).
        init: "auto", "batch" or "noise".
        init_tries: noise draws per example at most.
        generator: the randomness.
        given: optional user starting images N x C x H x W.
        norm: "l2" or "linf", the distance for choosing the nearest batch image.

    Returns:
        (points N x C x H x W, found bool (N,)); points equal x where nothing was found.
    """
    n = len(x)
    start = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    todo = (~decide.adversarial(clean_label, torch.arange(n, device=x.device))).nonzero()
    todo = todo.squeeze(1)
    if given is not None:
        if given.shape != x.shape:
            raise InputError(f"starting_points must have the shape of x {tuple(x.shape)}, "
                             f"got {tuple(given.shape)}")
        rows = todo[decide.can_query(todo)]
        if len(rows):
            cand = clip_box(given[rows].to(x))
            ok = decide(cand, rows)
            start[rows[ok]], found[rows[ok]] = cand[ok], True
    if init in ("auto", "batch"):
        _from_batch(decide, x, clean_label, todo[~found[todo]], start, found, norm)
    if init in ("auto", "noise"):
        for _ in range(init_tries):
            rows = todo[~found[todo]]
            rows = rows[decide.can_query(rows)]
            if len(rows) == 0:
                break
            cand = torch.rand(x[rows].shape, generator=generator, device=x.device,
                              dtype=x.dtype)
            ok = decide(cand, rows)
            start[rows[ok]], found[rows[ok]] = cand[ok], True
    return start, found


@dataclass(frozen=True)
class Start:
    """Where a label-only attack begins: the criterion, the batch rows ``idx`` that have a
    verified adversarial starting point, their clean images ``x`` and those ``points``."""

    decide: Decision
    idx: Tensor
    x: Tensor
    points: Tensor

    def boundary(self, tol: Tensor) -> Tensor:
        """The adversarial point nearest the boundary on each segment from x to its starting
        point (:func:`bisect` along :func:`blend` to ``tol``)."""
        one = torch.ones_like(tol)
        return bisect(self.decide, blend(self.x, self.points), self.idx, self.points, one,
                      tol)[0]


def begin(oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None, init: str,
          init_tries: int, generator: torch.Generator, given: Tensor | None = None,
          norm: str = "l2") -> Start:
    """The common start of a label-only attack: the criterion, the clean labels (one query
    each) and the verified adversarial starting points (:func:`starting_points`)."""
    decide = Decision(oracle, y, target)
    clean = decide.labels(x, torch.arange(len(x), device=x.device))
    start, found = starting_points(decide, x, clean, init, init_tries, generator, given, norm)
    idx = found.nonzero().squeeze(1)
    return Start(decide, idx, x[idx], start[idx])


def _from_batch(decide: Decision, x: Tensor, clean_label: Tensor, rows: Tensor, start: Tensor,
                found: Tensor, norm: str) -> None:
    """For each example in rows, the nearest batch image already known to be adversarial."""
    if len(rows) == 0 or len(x) < 2:
        return
    n = len(x)
    owner = rows[:, None].expand(-1, n)
    ok = decide.adversarial(clean_label[None, :].expand(len(rows), -1), owner)  # K x N
    p = 2.0 if norm == "l2" else float("inf")
    dist = torch.cdist(x[rows].flatten(1), x.flatten(1), p=p)
    dist = torch.where(ok, dist, torch.full_like(dist, float("inf")))
    best = dist.argmin(1)
    has = ok.any(1)
    start[rows[has]] = x[best[has]]
    found[rows[has]] = True


def distance(x: Tensor, x_adv: Tensor, norm: str) -> Tensor:
    """Per-example distance in the attack's norm."""
    return lp_norm(x_adv - x, norm)
