r"""NES: natural evolution strategies estimate the gradient from scores, PGD does the rest.

With :math:`J` the attacker's objective on the scores and :math:`u_j \sim N(0, I)`, the
antithetic estimate of :math:`\nabla_x J` from :math:`n` queries (n/2 pairs) is

.. math::  \hat g = \frac{1}{\sigma n} \sum_{j=1}^{n/2}
           \big(J(x + \sigma u_j) - J(x - \sigma u_j)\big)\, u_j ,

the gradient of the Gaussian smoothing :math:`E_u[J(x + \sigma u)]`, so
:math:`E[\hat g] = \nabla_x J + O(\sigma^2)` with the right scale (for a quadratic J the pair
difference is exactly :math:`2\sigma\, u_j^\top \nabla J`). The estimate drives the shared PGD
loop (sign step for Linf, normalised step for L2, projection, clipping, early stopping).
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import register
from advlab.attacks.blackbox.estimate import EstimatedSettings, Estimator, OracleProbe
from advlab.attacks.gradient import GradientAttack
from advlab.attacks.settings import positive
from advlab.errors import ThreatModelError
from advlab.losses import Objective
from advlab.threat import broadcast_rows, clip_box


class NESEstimate(Estimator):
    """The antithetic NES estimate from ``n_samples`` queries (n/2 pairs) at scale ``sigma``,
    plus the success check: ``1 + n_samples`` queries a step."""

    def __init__(self, sigma: float, n_samples: int, max_queries: int | None) -> None:
        super().__init__(max_queries)
        self.sigma, self.n_samples, self.step_cost = sigma, n_samples, 1 + n_samples

    def estimate(self, objective: Objective, probe: OracleProbe, x: Tensor, y: Tensor,
                 target: Tensor | None, rows: Tensor, budget: Tensor) -> Tensor:
        """The antithetic NES estimate from up to n_samples / 2 pairs per row: fewer where
        the budget is short, none (a zero estimate) where it cannot pay for a pair."""
        pairs = torch.clamp(budget // 2, max=self.n_samples // 2)  # per row
        m = int(pairs.max())
        grad = torch.zeros_like(x)
        if m == 0:
            return grad
        u = torch.randn((len(x), m, *x.shape[1:]), generator=probe.generator,
                        device=x.device, dtype=x.dtype)
        use = torch.arange(m, device=x.device)[None, :] < pairs[:, None]  # N x m
        r, j = use.nonzero(as_tuple=True)
        us = u[r, j]
        xs = x[r]
        queries = torch.cat([clip_box(xs + self.sigma * us), clip_box(xs - self.sigma * us)])
        owner = rows[r].repeat(2)
        scores = probe.oracle(queries, owner=owner)
        yy = y[r].repeat(2)
        tt = None if target is None else target[r].repeat(2)
        obj = objective(scores, yy, tt)
        diff = obj[: len(r)] - obj[len(r):]  # J(x + sigma u) - J(x - sigma u)
        grad.index_add_(0, r, broadcast_rows(diff, us) * us)
        k = pairs.clamp_min(1).to(x.dtype)
        return grad / broadcast_rows(2 * self.sigma * k, grad)


class NESSettings(EstimatedSettings):
    """The settings of :class:`NES` (its docstring): sigma > 0, an even n_samples >= 2."""

    sigma: float = 1e-3
    n_samples: int = 50

    def estimator(self) -> NESEstimate:
        return NESEstimate(self.sigma, self.n_samples, self.max_queries)

    def check(self) -> None:
        positive(sigma=self.sigma)
        if self.n_samples < 2 or self.n_samples % 2:
            raise ThreatModelError(f"n_samples must be even and >= 2, got {self.n_samples}")
        super().check()


@register("nes", knowledge="score", goal="both", norm="linf", kind="iterative")
class NES(GradientAttack):
    r"""PGD on the NES gradient estimate (antithetic Gaussian sampling).

    Args:
        eps: radius of the ball (pixel space); default 0.3 (linf), 2.0 (l2).
        norm: "linf" or "l2".
        sigma: standard deviation of the search distribution (pixel space).
        n_samples: queries per gradient estimate (even: n/2 antithetic pairs).
        alpha: PGD step size; default eps / 10.
        steps: loop steps; default enough to spend ``max_queries`` (1 + n_samples a step).
        max_queries: per-example budget (success checks included). The default, 2,000, keeps
            the default run on a few tiny images short.
        loss: objective on the scores: "margin" (C&W logit margin; the default, it does not
            saturate on confident examples) or "ce".
        random_start: start from a uniform point of the ball.
        seed: seeds the samples.

    Shape: x N x C x H x W in [0, 1], y (N,); queries per example in ``AttackResult.queries``.

    References: Ilyas, Engstrom, Athalye & Lin, "Black-box adversarial attacks with limited
    queries and information", ICML 2018, arXiv:1804.08598. Wierstra et al., "Natural
    evolution strategies", JMLR 2014, arXiv:1106.4487.
    """

    Settings = NESSettings
    preset = {"loss": "margin"}
    fixed = {"restarts": 1, "early_stop": True, "source": None}

    def step_sizes(self, eps: Tensor) -> Tensor:
        return torch.full_like(eps, self.alpha) if self.alpha is not None else eps / 10
