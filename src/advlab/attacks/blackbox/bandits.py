r"""Bandits-TD: gradient estimation with a time prior and a data prior, driving PGD.

The estimate is a *prior* :math:`v` (the bandit's action) that is refined online and used as
the gradient of the shared PGD loop. Each step spends two queries on a finite-difference
estimate of the gradient of the objective *with respect to the prior*:

.. math::  u = \delta\, N(0, I) / \sqrt{d},\quad q_\pm = \mathrm{up}(v \pm u),\quad
           \Delta = \frac{J(x + \eta\, q_+ / \|q_+\|_2) - J(x + \eta\, q_- / \|q_-\|_2)}
                          {\eta\, \delta}\; u ,

then updates :math:`v` by an online step (exponentiated gradient for Linf, gradient ascent
for L2) and steps the image along :math:`\mathrm{up}(v)`. *Time prior*: :math:`v` carries over
from step to step (successive gradients are correlated). *Data prior* (tiling): :math:`v` lives
at a reduced resolution and ``up`` copies each entry to a ``tile x tile`` block of pixels
(nearby pixels have similar gradients), so there are fewer dimensions to explore.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.attacks.base import register
from advlab.attacks.blackbox.estimate import EstimatedSettings, Estimator, OracleProbe
from advlab.attacks.gradient import GradientAttack
from advlab.attacks.settings import at_least, positive
from advlab.losses import Objective
from advlab.threat import broadcast_rows, clip_box


class BanditsEstimate(Estimator):
    """Bandits-TD's estimate: the prior v (per example, kept in the probe), refined by two
    queries a step, upsampled to the image; with the success check, 3 queries a step."""

    step_cost = 3

    def __init__(self, norm: str, fd_eta: float, exploration: float, online_lr: float,
                 tile: int, max_queries: int | None) -> None:
        super().__init__(max_queries)
        self.norm, self.fd_eta, self.exploration = norm, fd_eta, exploration
        self.online_lr, self.tile = online_lr, tile

    def init_memory(self, x: Tensor) -> dict[str, Tensor]:
        c, h, w = x.shape[1:]
        size = (len(x), c, math.ceil(h / self.tile), math.ceil(w / self.tile))
        return {"prior": torch.zeros(size, device=x.device, dtype=x.dtype)}

    def estimate(self, objective: Objective, probe: OracleProbe, x: Tensor, y: Tensor,
                 target: Tensor | None, rows: Tensor, budget: Tensor) -> Tensor:
        """Two queries refine each row's prior (rows with fewer left keep theirs); the
        gradient handed to PGD is the upsampled prior."""
        prior = probe.memory["prior"]
        go = budget >= 2
        if go.any():
            prior[rows[go]] = self._update(objective, probe, x[go], y[go],
                                           None if target is None else target[go],
                                           rows[go], prior[rows[go]])
        return self._up(prior[rows], x)

    def _up(self, v: Tensor, like: Tensor) -> Tensor:
        """The data prior: each entry of v covers a tile x tile block of pixels."""
        return F.interpolate(v, size=like.shape[2:], mode="nearest")

    def _update(self, objective: Objective, probe: OracleProbe, x: Tensor, y: Tensor,
                target: Tensor | None, rows: Tensor, v: Tensor) -> Tensor:
        """The time prior's online step: v moved along the two-query estimate of dJ/dv."""
        g = self.prior_gradient(objective, probe, x, y, target, rows, v)
        if self.norm == "linf":
            # exponentiated gradient on v in [-1, 1]: with p = (v + 1) / 2,
            # p <- p e^{lr g} / (p e^{lr g} + (1 - p) e^{-lr g}), i.e. v <- tanh(atanh(v) + lr g)
            return torch.tanh(torch.atanh(v.clamp(-1 + 1e-6, 1 - 1e-6)) + self.online_lr * g)
        return v + self.online_lr * g

    def prior_gradient(self, objective: Objective, probe: OracleProbe, x: Tensor, y: Tensor,
                       target: Tensor | None, rows: Tensor, v: Tensor) -> Tensor:
        """Delta = (J(x + eta q+/|q+|) - J(x + eta q-/|q-|)) / (eta delta) u, two queries per
        row, with q+- = up(v +- u) and u = delta N(0, I) / sqrt(d).

        Shape: x M x C x H x W, v and the result M x C x h x w (the prior's resolution)."""
        d = v[0].numel()
        u = self.exploration * torch.randn(v.shape, generator=probe.generator,
                                           device=v.device, dtype=v.dtype) / math.sqrt(d)
        q1, q2 = self._up(v + u, x), self._up(v - u, x)
        queries = torch.cat([clip_box(x + self.fd_eta * _unit(q1)),
                             clip_box(x + self.fd_eta * _unit(q2))])
        scores = probe.oracle(queries, owner=rows.repeat(2))
        yy = y.repeat(2)
        tt = None if target is None else target.repeat(2)
        obj = objective(scores, yy, tt)
        deriv = (obj[: len(x)] - obj[len(x):]) / (self.fd_eta * self.exploration)
        return broadcast_rows(deriv, u) * u


class BanditsSettings(EstimatedSettings):
    """The settings of :class:`Bandits` (its docstring): fd_eta, exploration and online_lr
    positive, tile >= 1."""

    fd_eta: float = 0.1
    exploration: float = 1.0
    online_lr: float = 10.0
    tile: int = 2

    def estimator(self) -> BanditsEstimate:
        return BanditsEstimate(self.norm, self.fd_eta, self.exploration, self.online_lr,
                               self.tile, self.max_queries)

    def check(self) -> None:
        positive(fd_eta=self.fd_eta, exploration=self.exploration, online_lr=self.online_lr)
        at_least(1, tile=self.tile)
        super().check()


@register("bandits", knowledge="score", goal="both", norm="linf", kind="iterative")
class Bandits(GradientAttack):
    r"""Bandits-TD (time and data priors) for Linf or L2.

    Args:
        eps: radius of the ball (pixel space); default 0.3 (linf), 2.0 (l2).
        norm: "linf" or "l2".
        alpha: image step size (the paper's image_lr); default eps / 10.
        fd_eta: finite-difference step eta (L2 length of the exploration queries' offset).
        exploration: delta, the scale of the exploration noise around the prior.
        online_lr: step size of the prior's online update (the paper's 100 was tuned on
            ImageNet; 10 is better on MNIST).
        tile: side in pixels of one tile of the data prior (1: no tiling); 2 on 28 x 28
            images (the paper's ImageNet prior had about 6-pixel tiles on 299 x 299).
        steps: loop steps; default enough to spend ``max_queries`` (3 queries a step: the
            success check and the two exploration queries).
        max_queries: per-example budget (success checks included). The default, 2,000,
            keeps the default run on a few tiny images short.
        loss: objective on the scores: "margin" (C&W logit margin, the default: the
            cross-entropy of the paper saturates on confident MNIST examples) or "ce".
        seed: seeds the exploration.

    Shape: x N x C x H x W in [0, 1], y (N,); queries per example in ``AttackResult.queries``.

    References: Ilyas, Engstrom & Madry, "Prior convictions: black-box adversarial attacks
    with bandits and priors", ICLR 2019, arXiv:1807.07978.
    """

    Settings = BanditsSettings
    preset = {"loss": "margin"}
    fixed = {"random_start": False, "restarts": 1, "early_stop": True, "source": None}

    def step_sizes(self, eps: Tensor) -> Tensor:
        return torch.full_like(eps, self.alpha) if self.alpha is not None else eps / 10


def _unit(q: Tensor) -> Tensor:
    n = q.flatten(1).norm(dim=1)
    return q / broadcast_rows(torch.where(n == 0, torch.ones_like(n), n), q)
