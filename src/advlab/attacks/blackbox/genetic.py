r"""GenAttack: a genetic algorithm on the output scores, inside the Linf ball.

Each example keeps a population of N perturbed images :math:`P_1, \dots, P_N` in
:math:`S(x) = \{x' : \|x' - x\|_\infty \le \delta_{max}, 0 \le x' \le 1\}`, first drawn
uniformly from the ball. Every generation:

1. *fitness* from the scores (log-probabilities :math:`\log p`):

   .. math::  \text{targeted: } F(P) = \log p_t(P) - \log \sum_{j \ne t} p_j(P),
              \qquad \text{untargeted: } F(P) = \log \sum_{j \ne y} p_j(P) - \log p_y(P);

2. *elitism*: the fittest member survives unchanged (and is not queried again);
3. *selection*: parents drawn with probabilities :math:`\mathrm{softmax}(F / \tau)`;
4. *crossover*: each pixel of the child comes from parent 1 with probability
   :math:`s_1 / (s_1 + s_2)`, the parents' selection probabilities;
5. *mutation*: each pixel, with probability :math:`\rho`, gets
   :math:`\mathcal U(-\alpha \delta_{max}, \alpha \delta_{max})`; then the child is
   projected back into :math:`S(x)`.

*Adaptive* mutation: when the best margin :math:`\max_P (p_t - \max_j p_j)` has not
improved for a while (100 generations when above -0.4, 300 otherwise), the number of
plateaus grows and :math:`\rho = \max(\rho_{min}, 0.5 \cdot 0.9^{plateaus})`,
:math:`\alpha = \max(\alpha_{min}, 0.4 \cdot 0.9^{plateaus})` shrink (:math:`\rho = 1` in the
first 10 generations), as in the authors' code. An example stops as soon as a member is
adversarial (checked on the queried scores) or its budget is spent.
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import is_success, register
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle
from advlab.attacks.settings import Settings, at_least, positive
from advlab.errors import ThreatModelError
from advlab.threat import broadcast_rows, clip_box


def fitness(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """GenAttack's fitness: the log-odds of the target (or against the true class)."""
    logp = logits.log_softmax(1)
    cls = y if target is None else target
    own = logp.gather(1, cls[:, None]).squeeze(1)
    rest = logp.scatter(1, cls[:, None], float("-inf")).logsumexp(1)
    return own - rest if target is not None else rest - own


def win_margin(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """p_t - max_j p_j (targeted) or max_{j != y} p_j - p_y (untargeted), in [-1, 0] or up."""
    p = logits.softmax(1)
    if target is not None:
        return p.gather(1, target[:, None]).squeeze(1) - p.amax(1)
    own = p.gather(1, y[:, None]).squeeze(1)
    return p.scatter(1, y[:, None], float("-inf")).amax(1) - own


class GenAttackSettings(Settings):
    """The settings of :class:`GenAttack` (its docstring): eps >= 0 (default 0.3),
    max_queries >= 1, pop_size >= 2, mutation_rate in (0, 1], alpha and temperature > 0."""

    eps: float | None = None
    max_queries: int = 10_000
    pop_size: int = 6
    mutation_rate: float = 0.05
    alpha: float = 0.15
    temperature: float = 0.1
    adaptive: bool = True
    seed: int = 0

    def check(self) -> None:
        if self.eps is None:
            self.resolve("eps", 0.3)
        at_least(0, eps=self.eps)
        at_least(1, max_queries=self.max_queries)
        at_least(2, pop_size=self.pop_size)
        positive(alpha=self.alpha, temperature=self.temperature)
        if not 0 < self.mutation_rate <= 1:
            raise ThreatModelError(f"mutation_rate must lie in (0, 1], got {self.mutation_rate}")


@register("genattack", knowledge="score", goal="both", norm="linf", kind="iterative")
class GenAttack(BlackBoxAttack):
    r"""GenAttack (Linf), batched over examples, each with its own population.

    Args:
        eps: delta_max, the Linf radius (pixel space); default 0.3 (the paper's MNIST value).
        max_queries: per-example budget; default 10,000 (the paper's MNIST median is about
            1,000 queries targeted; untargeted runs stop much earlier).
        pop_size: N, the population per example (6 in the paper).
        mutation_rate: rho_min, the floor of the mutation probability (and rho itself when
            ``adaptive`` is off).
        alpha: alpha_min, the floor of the mutation range (relative to eps).
        temperature: tau of the selection softmax.
        adaptive: shrink rho and alpha on plateaus (the paper's adaptive schedule).
        seed: seeds the population, selection, crossover and mutation.

    Shape: x N x C x H x W in [0, 1], y (N,); ``AttackResult.queries`` per example
    (N members at the start, N - 1 per generation thanks to elitism).

    References: Alzantot, Sharma, Chakraborty, Zhang, Hsieh & Srivastava, "GenAttack:
    practical black-box attacks with gradient-free optimization", GECCO 2019,
    arXiv:1805.11090.
    """

    Settings = GenAttackSettings
    norm = "linf"

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        assert eps is not None
        x_adv = x.clone()
        idx = ((eps > 0) & (oracle.remaining() >= self.pop_size)).nonzero().squeeze(1)
        if len(idx) == 0:
            return x_adv
        k, m = len(idx), self.pop_size
        x0, e = x[idx], eps[idx]
        y0, t0 = y[idx], None if target is None else target[idx]
        ex = lambda v: broadcast_rows(v, x0)  # noqa: E731
        # P^0: uniform in the ball (paper), M x K x C x H x W
        u = torch.rand((m, *x0.shape), generator=generator, device=x.device, dtype=x.dtype)
        pop = clip_box(x0 + (2 * u - 1) * ex(e))
        logits = self._query(oracle, pop, idx)
        fit = torch.stack([fitness(z, y0, t0) for z in logits])           # M x K
        adv = torch.stack([is_success(z, y0, t0) for z in logits])        # M x K
        margin = torch.stack([win_margin(z, y0, t0) for z in logits]).amax(0)
        best_margin, since, plateaus = margin, torch.zeros_like(idx), torch.zeros_like(idx)
        done = adv.any(0)
        elite_at = torch.where(done, adv.float().argmax(0), fit.argmax(0))
        x_adv[idx] = pop[elite_at, torch.arange(k)]
        generation = 0
        while True:
            generation += 1
            live = (~done & (oracle.remaining()[idx] >= m - 1)).nonzero().squeeze(1)
            if len(live) == 0:
                break
            rho, alpha = self._schedule(generation, plateaus[live])
            children = self._breed(pop[:, live], fit[:, live], elite_at[live], x0[live],
                                   e[live], rho, alpha, generator)
            z = self._query(oracle, children, idx[live])                    # (M-1) x L x K'
            ys, ts = y0[live], None if t0 is None else t0[live]
            c_fit = torch.stack([fitness(v, ys, ts) for v in z])
            c_adv = torch.stack([is_success(v, ys, ts) for v in z])
            c_margin = torch.stack([win_margin(v, ys, ts) for v in z]).amax(0)
            ar = torch.arange(len(live), device=x.device)
            elite, e_fit = pop[elite_at[live], live], fit[elite_at[live], live]
            pop[0, live], fit[0, live] = elite, e_fit      # the elite survives, unqueried
            pop[1:, live], fit[1:, live] = children, c_fit
            hit = c_adv.any(0)
            new_elite = torch.where(hit, 1 + c_adv.float().argmax(0), fit[:, live].argmax(0))
            elite_at[live] = new_elite
            x_adv[idx[live]] = pop[new_elite, live]
            done[live] = hit
            better = c_margin > best_margin[live]
            best_margin[live] = torch.maximum(best_margin[live], c_margin)
            since[live] = torch.where(better, 0, since[live] + 1)
            limit = torch.where(best_margin[live] > -0.4, 100, 300)
            stuck = since[live] > limit
            plateaus[live] += stuck.long()
            since[live] = torch.where(stuck, 0, since[live])
            del ar
        return x_adv

    def _query(self, oracle: Oracle, pop: Tensor, idx: Tensor) -> Tensor:
        """Scores of a population M x K x C x H x W, member rows charged to their example."""
        m, k = pop.shape[:2]
        z = oracle(pop.reshape(m * k, *pop.shape[2:]), owner=idx.repeat(m))
        return z.view(m, k, -1)

    def _schedule(self, generation: int, plateaus: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example mutation probability rho and range alpha."""
        p = plateaus.to(torch.float64)
        if not self.adaptive:
            return torch.full_like(p, self.mutation_rate), torch.full_like(p, self.alpha)
        rho = torch.clamp(0.5 * 0.9 ** p, min=self.mutation_rate)
        if generation < 10:
            rho = torch.ones_like(rho)
        alpha = torch.clamp(0.4 * 0.9 ** p, min=self.alpha)
        return rho, alpha

    def _breed(self, pop: Tensor, fit: Tensor, elite_at: Tensor, x0: Tensor, eps: Tensor,
               rho: Tensor, alpha: Tensor, g: torch.Generator) -> Tensor:
        """Selection, crossover and mutation: M - 1 children per example (M x L -> M-1 x L)."""
        m, k = fit.shape
        probs = (fit / self.temperature).softmax(0).T                      # L x M
        parents = torch.multinomial(probs, 2 * (m - 1), replacement=True, generator=g).T
        p1, p2 = parents[:m - 1], parents[m - 1:]                          # (M-1) x L
        cols = torch.arange(k, device=pop.device)
        s1, s2 = probs.T[p1, cols], probs.T[p2, cols]
        take1 = s1 / (s1 + s2).clamp_min(1e-30)
        shape = (m - 1, *pop.shape[1:])
        u = torch.rand(shape, generator=g, device=pop.device, dtype=pop.dtype)
        child = torch.where(u < broadcast_rows(take1.flatten(), u.flatten(0, 1)).view(
            m - 1, k, *([1] * (pop.dim() - 2))), pop[p1, cols], pop[p2, cols])
        dt = pop.dtype
        r = rho.to(dt).view(1, k, *([1] * (pop.dim() - 2)))
        a = (alpha.to(dt) * eps).view(1, k, *([1] * (pop.dim() - 2)))
        mask = torch.rand(shape, generator=g, device=pop.device, dtype=dt) < r
        noise = (2 * torch.rand(shape, generator=g, device=pop.device, dtype=dt) - 1) * a
        child = child + mask * noise
        e = eps.view(1, k, *([1] * (pop.dim() - 2)))
        return clip_box(torch.minimum(torch.maximum(child, x0 - e), x0 + e))
