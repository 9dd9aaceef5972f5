r"""SPSA: a gradient-free attack for models whose gradients cannot be trusted (masked,
obfuscated, non-differentiable), run through the query oracle.

With :math:`J` the attacker's objective on the scores (the logit margin by default) and
:math:`n` Rademacher directions :math:`v_j \in \{-1, +1\}^D`, the simultaneous-perturbation
estimate of :math:`\nabla_x J` at x is

.. math::  \hat g = \frac{1}{n} \sum_{j=1}^{n}
           \frac{J(x + \delta v_j) - J(x - \delta v_j)}{2 \delta}\, v_j

(:math:`v_j^{-1} = v_j` entry by entry), and the iterate takes an Adam step on it, then the
projection onto the eps-ball and the box:

.. math::  m \leftarrow \beta_1 m + (1 - \beta_1) \hat g, \quad
           s \leftarrow \beta_2 s + (1 - \beta_2) \hat g^2, \quad
           x \leftarrow \Pi_{S(x)}\Big(x + \alpha\, \frac{m / (1 - \beta_1^t)}
           {\sqrt{s / (1 - \beta_2^t)} + 10^{-8}}\Big)

Because only loss values are used, a model that hides its gradient (a shattered gradient,
a saturated softmax) is attacked as it computes, which is why Uesato et al. used it to
show that several defenses gave a false sense of security. The queries are clipped to the
box [0, 1], as every advlab oracle query is.

References: Uesato, O'Donoghue, van den Oord & Kohli, "Adversarial risk and the dangers of
evaluating against weak attacks", ICML 2018, arXiv:1802.05666. Spall, "Multivariate
stochastic approximation using a simultaneous perturbation gradient approximation", IEEE
TAC 1992.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advlab.attacks.base import register
from advlab.attacks.blackbox.estimate import EstimatedSettings, Estimator, OracleProbe
from advlab.attacks.gradient import GradientAttack
from advlab.attacks.settings import at_least, positive
from advlab.errors import ThreatModelError
from advlab.losses import Objective
from advlab.optim import RowAdam
from advlab.threat import broadcast_rows, clip_box


class SPSAEstimate(Estimator):
    """The SPSA estimate from ``n_samples`` Rademacher pairs at step ``delta``, plus the
    success check: ``1 + 2 n_samples`` queries a step."""

    def __init__(self, delta: float, n_samples: int, max_queries: int | None) -> None:
        super().__init__(max_queries)
        self.delta, self.n_samples, self.step_cost = delta, n_samples, 1 + 2 * n_samples

    def estimate(self, objective: Objective, probe: OracleProbe, x: Tensor, y: Tensor,
                 target: Tensor | None, rows: Tensor, budget: Tensor) -> Tensor:
        """The SPSA estimate from up to n_samples pairs per row (fewer where the budget is
        short; a zero estimate where it cannot pay for one pair)."""
        pairs = torch.clamp(budget // 2, max=self.n_samples)
        m = int(pairs.max())
        grad = torch.zeros_like(x)
        if m == 0:
            return grad
        use = torch.arange(m, device=x.device)[None, :] < pairs[:, None]
        r, _ = use.nonzero(as_tuple=True)
        v = torch.randint(0, 2, (len(r), *x.shape[1:]), generator=probe.generator,
                          device=x.device).to(x.dtype) * 2 - 1
        xs = x[r]
        queries = torch.cat([clip_box(xs + self.delta * v), clip_box(xs - self.delta * v)])
        scores = probe.oracle(queries, owner=rows[r].repeat(2))
        yy = y[r].repeat(2)
        tt = None if target is None else target[r].repeat(2)
        obj = objective(scores, yy, tt)
        diff = (obj[: len(r)] - obj[len(r):]) / (2 * self.delta)
        grad.index_add_(0, r, broadcast_rows(diff, v) * v)
        return grad / broadcast_rows(pairs.clamp_min(1).to(x.dtype), grad)


class SPSASettings(EstimatedSettings):
    """The settings of :class:`SPSA` (its docstring): delta and lr positive, n_samples >= 1,
    Adam's betas in [0, 1); the loop's step size alpha is Adam's lr."""

    delta: float = 0.01
    n_samples: int = 32
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)

    def estimator(self) -> SPSAEstimate:
        return SPSAEstimate(self.delta, self.n_samples, self.max_queries)

    def check(self) -> None:
        positive(delta=self.delta, lr=self.lr)
        at_least(1, n_samples=self.n_samples)
        if not all(0 <= b < 1 for b in self.betas):
            raise ThreatModelError(f"Adam's betas must lie in [0, 1), got {self.betas}")
        self.resolve("alpha", self.lr)
        super().check()


@register("spsa", knowledge="score", goal="both", norm="linf", kind="iterative")
class SPSA(GradientAttack):
    r"""SPSA with Adam, Linf (the paper's) or L2.

    Args:
        eps: radius of the ball (pixel space); default 0.3 (linf), 2.0 (l2).
        norm: "linf" or "l2".
        delta: the finite-difference step :math:`\delta` (pixel space).
        n_samples: Rademacher directions per estimate (2 queries each).
        lr: Adam's step size :math:`\alpha`.
        betas: Adam's :math:`(\beta_1, \beta_2)`.
        steps: Adam steps; default enough to spend ``max_queries`` (1 + 2 n_samples a step).
        max_queries: per-example budget (success checks included), or None with ``steps``.
        loss: objective on the scores: "margin" (the paper's) or "ce".
        seed: seeds the directions.

    Shape: x N x C x H x W in [0, 1], y (N,); queries per example in ``AttackResult.queries``.

    References: Uesato et al., ICML 2018, arXiv:1802.05666.
    """

    Settings = SPSASettings
    preset = {"loss": "margin", "steps": 100, "max_queries": None}
    fixed = {"alpha": None, "random_start": False, "restarts": 1, "early_stop": True,
             "source": None}

    def init_memory(self, x: Tensor) -> dict[str, Any]:
        """Adam's state, per example (:class:`advlab.optim.RowAdam`)."""
        b1, b2 = self.betas
        return {"adam": RowAdam.like(x, 1.0, b1=b1, b2=b2)}

    def direction(self, grad: Tensor, memory: dict[str, Any], idx: Tensor | None) -> Tensor:
        """Adam's bias-corrected step direction (its unit-rate step descending -J); zero for
        a row whose estimate is zero (its budget spent), which therefore stays where its
        last query checked it."""
        rows = slice(None) if idx is None else idx
        d = memory["adam"].step(torch.zeros_like(grad), -grad, rows)
        live = grad.flatten(1).abs().amax(1) > 0
        return broadcast_rows(live, grad) * d
