r"""One-pixel attack: differential evolution over d pixels, from the output scores.

A candidate is d tuples :math:`(u, v, c_1, \dots, c_C)`: the pixel at row
:math:`\lfloor u \rfloor`, column :math:`\lfloor v \rfloor` is set to the values c
(:math:`u \in [0, H)`, :math:`v \in [0, W)`, :math:`c \in [0, 1]`). Each example keeps a
population of P candidates, first drawn uniformly in these bounds (the paper draws the
values from a Gaussian around mid-grey); every generation, each
member :math:`z_i` gets a trial

.. math::  m_i = z_{r_1} + F\,(z_{r_2} - z_{r_3}) \quad (\text{DE/rand/1, } r_1, r_2, r_3
           \text{ distinct and} \ne i), \qquad
           t_{ij} = \begin{cases} m_{ij} & U_{ij} < CR \text{ or } j = j_{rand} \\
           z_{ij} & \text{otherwise} \end{cases}

(``strategy="best1"``: :math:`z_{r_1}` replaced by the fittest member, DE/best/1, scipy's
default that torchattacks and ART use, with F dithered in [0.5, 1)), clipped into the
bounds, which replaces :math:`z_i` when its fitness is no worse. Fitness is the
probability of the true class (untargeted, minimised) or :math:`1 - p_t` (targeted). The
paper uses F = 0.5, no crossover (CR = 1), P = 400 and 100 generations. An example stops
as soon as a queried candidate reaches the goal (it is returned) or its budget is spent
(the fittest candidate is returned); queries: P at the start, P per generation.

References: Su, Vargas & Sakurai, "One pixel attack for fooling deep neural networks",
IEEE Transactions on Evolutionary Computation 23(5), 2019, arXiv:1710.08864.
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import is_success, register
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle
from advlab.attacks.settings import Settings, at_least, one_of
from advlab.errors import ThreatModelError


def bounds(pixels: int, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Upper bounds of a candidate (lower bounds are 0): (H, W, 1, ..., 1) per pixel."""
    c, h, w = shape
    return torch.tensor([float(h), float(w)] + [1.0] * c).repeat(pixels)


def donors(k: int, p: int, g: torch.Generator, device: torch.device) -> Tensor:
    """r_1, r_2, r_3 for each member: K x P x 3 distinct indices, none equal to the member's."""
    score = torch.rand(k, p, p, generator=g, device=device)
    score.diagonal(dim1=1, dim2=2).fill_(2.0)  # never choose i itself
    return score.topk(3, dim=2, largest=False).indices


def mutate(pop: Tensor, f: float, cr: float, hi: Tensor, g: torch.Generator,
           best: Tensor | None = None) -> Tensor:
    """DE/rand/1 (or DE/best/1 when ``best`` is given) with binomial crossover, clipped
    into [0, hi].

    Args:
        pop: K x P x D populations (P >= 4).
        f: the differential weight F.
        cr: the crossover rate CR.
        hi: (D,) upper bounds.
        best: K x D, each population's fittest member: the base of DE/best/1.

    Returns:
        K x P x D trials.
    """
    k, p, d = pop.shape
    r = donors(k, p, g, pop.device)
    pick = lambda j: pop.gather(1, r[..., j, None].expand(k, p, d))  # noqa: E731
    base = pick(0) if best is None else best[:, None].expand(k, p, d)
    mutant = base + f * (pick(1) - pick(2))
    cross = torch.rand(k, p, d, generator=g, device=pop.device) < cr
    forced = torch.randint(d, (k, p, 1), generator=g, device=pop.device)
    cross |= torch.arange(d, device=pop.device) == forced
    trial = torch.where(cross, mutant, pop)
    return torch.minimum(torch.maximum(trial, torch.zeros_like(hi)), hi.to(pop))


def apply(x: Tensor, cand: Tensor) -> Tensor:
    """The images x (M x C x H x W) with the pixels of the candidates (M x D) set."""
    m, c, h, w = x.shape
    z = cand.view(m, cand.shape[1] // (2 + c), 2 + c)
    rows = z[..., 0].floor().long().clamp(0, h - 1)
    cols = z[..., 1].floor().long().clamp(0, w - 1)
    out = x.clone()
    out[torch.arange(m, device=x.device)[:, None], :, rows, cols] = z[..., 2:].to(x.dtype)
    return out


class OnePixelSettings(Settings):
    """The settings of :class:`OnePixel` (its docstring): pixels >= 1, popsize >= 4,
    steps >= 0, f in (0, 2], crossover in [0, 1], strategy rand1 or best1, max_queries >= 1
    or None."""

    pixels: int = 1
    popsize: int = 100
    steps: int = 30
    f: float = 0.5
    crossover: float = 1.0
    strategy: str = "rand1"
    max_queries: int | None = None
    seed: int = 0

    def check(self) -> None:
        at_least(1, pixels=self.pixels, max_queries=self.max_queries)
        at_least(4, popsize=self.popsize)
        at_least(0, steps=self.steps)
        if not (0 < self.f <= 2 and 0 <= self.crossover <= 1):
            raise ThreatModelError(f"f in (0, 2] and crossover in [0, 1] required, got "
                                   f"{self.f}, {self.crossover}")
        one_of("strategy", self.strategy, ("rand1", "best1"))


@register("onepixel", knowledge="score", goal="both", norm="l0", kind="iterative",
          bounded=False)
class OnePixel(BlackBoxAttack):
    r"""One-pixel (d-pixel) attack by differential evolution, batched over examples.

    Args:
        pixels: d, the pixels changed (the paper: 1, 3 and 5).
        popsize: P, candidates per example (the paper: 400).
        steps: generations (the paper: 100).
        f: the differential weight F (the paper: 0.5).
        crossover: CR, the binomial crossover rate (the paper: 1, no crossover).
        strategy: "rand1" (the paper's DE/rand/1) or "best1" (DE/best/1).
        max_queries: per-example budget, or None (P (steps + 1) at most).
        seed: seeds the population, mutation and crossover.

    Shape: x N x C x H x W in [0, 1], y (N,); ``AttackResult.queries`` per example.

    References: Su, Vargas & Sakurai, IEEE TEVC 2019, arXiv:1710.08864.
    """

    Settings = OnePixelSettings
    positional = ()
    norm = None

    def attack(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
               eps: Tensor | None, generator: torch.Generator) -> Tensor:
        x_adv = x.clone()
        p = self.popsize
        idx = (oracle.remaining() >= p).nonzero().squeeze(1)
        if len(idx) == 0:
            return x_adv
        hi = bounds(self.pixels, x.shape[1:]).to(x)
        pop = torch.rand(len(idx), p, len(hi), generator=generator, device=x.device,
                         dtype=x.dtype) * hi
        fit, done = self._evaluate(oracle, x, y, target, idx, pop, x_adv)
        for _ in range(self.steps):
            live = (~done & (oracle.remaining()[idx] >= p)).nonzero().squeeze(1)
            if len(live) == 0:
                break
            best = None
            if self.strategy == "best1":
                best = pop[live, fit[live].argmin(1)]
            trial = mutate(pop[live], self.f, self.crossover, hi, generator, best)
            t_fit, t_done = self._evaluate(oracle, x, y, target, idx[live], trial, x_adv)
            keep = t_fit <= fit[live]
            pop[live] = torch.where(keep[..., None], trial, pop[live])
            fit[live] = torch.where(keep, t_fit, fit[live])
            done[live] = t_done
        rest = (~done).nonzero().squeeze(1)  # not fooled: the fittest candidate
        fittest = pop[rest, fit[rest].argmin(1)]
        x_adv[idx[rest]] = apply(x[idx[rest]], fittest)
        return x_adv

    def _evaluate(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
                  idx: Tensor, pop: Tensor, x_adv: Tensor) -> tuple[Tensor, Tensor]:
        """Query K x P candidates; returns their fitness K x P and which examples reached the
        goal (their first adversarial candidate is written into x_adv)."""
        k, p, _ = pop.shape
        owner = idx.repeat_interleave(p)
        imgs = apply(x[owner], pop.flatten(0, 1))
        logits = oracle(imgs, owner=owner)
        cls = (y if target is None else target)[owner]
        prob = logits.softmax(1).gather(1, cls[:, None]).squeeze(1)
        fit = (prob if target is None else 1 - prob).view(k, p)
        ok = is_success(logits, y[owner], None if target is None else target[owner]).view(k, p)
        hit = ok.any(1)
        first = ok.float().argmax(1)
        rows = hit.nonzero().squeeze(1)
        x_adv[idx[rows]] = imgs.view(k, p, *x.shape[1:])[rows, first[rows]]
        return fit, hit
