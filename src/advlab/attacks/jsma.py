r"""Jacobian-based Saliency Map Attack (JSMA), targeted, L0: few pixels, changed a lot.

With :math:`\alpha_i = \partial Z_t / \partial x_i` (the target class) and
:math:`\beta_i = \sum_{j \ne t} \partial Z_j / \partial x_i` (all the others), the lecture's
saliency map keeps only the pixels that raise the target and lower all the others:

.. math::  S(x, t)_i = \begin{cases} 0 & \text{if } \alpha_i < 0 \text{ or } \beta_i > 0 \\
           \alpha_i\, |\beta_i| & \text{otherwise} \end{cases}

(written :math:`\mathrm{relu}(\alpha_i)\,\mathrm{relu}(-\beta_i)` in the code). The paper's
attack (its Algorithm 3) searches pixel *pairs* (p, q) of the search domain
:math:`\Gamma`, with :math:`\alpha_{pq} = \alpha_p + \alpha_q` and
:math:`\beta_{pq} = \beta_p + \beta_q`:

.. math::  (p^*, q^*) = \arg\max_{p \ne q \in \Gamma}\ \alpha_{pq}\, |\beta_{pq}|
           \quad \text{subject to } \alpha_{pq} > 0,\ \beta_{pq} < 0,

changes both by :math:`\theta` (clipped to [0, 1]; :math:`\theta = +1` sets them to 1),
removes them from :math:`\Gamma`, and repeats until the prediction is the target or
:math:`\lfloor \gamma M / 2 \rfloor` pairs have been changed (M features). The decrease
variant (:math:`\theta < 0`) flips the signs: :math:`\alpha_{pq} < 0,\ \beta_{pq} > 0`.
An example with no admissible pair left stops (it has failed).

Network output, ``output=``: the paper differentiates the network's output F. With
``"probs"`` (the default) F is the softmax :math:`p = \mathrm{softmax}(Z)`; since
:math:`\sum_j p_j = 1`, :math:`\beta = -\alpha` exactly, the conditions reduce to
:math:`\alpha_{pq} > 0` and the score to :math:`\alpha_{pq}^2`, so the best pair is the two
largest :math:`\alpha_p` in :math:`\Gamma` (found in O(M), exactly). With ``"logits"`` F is Z
(cleverhans' JSMA-Z) and the full pair search runs. On mnist-cnn (all 9 targets of 100
correctly classified test images, theta = 1, gamma = 14.5%) the probabilities succeed about
as often as the paper reports for LeNet (97.1% with 4.02% of the pixels) and the logits
clearly less often with more pixels changed; single pixels on the probabilities do as well
as pairs (``python benchmarks/whitebox_minnorm.py --sections jsma``, figures in
benchmarks/results/whitebox_minnorm-jsma-mnist-cnn.json). (In float32 :math:`p_t`
underflows when the target's logit is about 100 below the top one; alpha is then 0, no pair
is admissible and the example stops: use ``output="logits"`` for such models.)

Everything is batched over images: the pair scores of all images are one masked tensor of
outer sums, computed in chunks to bound memory. Only pairs with at least one member in
:math:`\{p: \alpha_p > 0\}` (or in :math:`\{p: \beta_p < 0\}`, whichever is smaller) can be
admissible, so the rows of the pair matrix are restricted to that set; the search is exact.

References: Papernot, McDaniel, Jha, Fredrikson, Celik & Swami, "The limitations of deep
learning in adversarial settings", IEEE EuroS&P 2016, arXiv:1511.07528.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, register
from advlab.attacks.settings import TargetedSettings, one_of
from advlab.errors import ThreatModelError
from advlab.threat import clip_box

CHUNK = 1 << 23  # elements of one block of pair scores (32 MB in float32)


def saliency_map(alpha: Tensor, beta: Tensor, domain: Tensor, theta: float = 1.0) -> Tensor:
    r"""The lecture's single-pixel saliency map, :math:`\mathrm{relu}(\alpha)\,\mathrm{relu}
    (-\beta)` (signs flipped for theta < 0), 0 outside the search domain.

    Shape: alpha, beta, domain N x M -> N x M.
    """
    s = 1.0 if theta > 0 else -1.0
    return ((s * alpha).clamp_min(0) * (-s * beta).clamp_min(0)).masked_fill(~domain, 0)


def pair_map(alpha: Tensor, beta: Tensor, domain: Tensor, theta: float = 1.0,
             rows: Tensor | None = None) -> Tensor:
    r"""The paper's pair saliency :math:`\mathrm{relu}(\alpha_p + \alpha_q)\,
    \mathrm{relu}(-(\beta_p + \beta_q))` for p in ``rows`` (all pixels when None) and every q;
    0 for p == q and for pairs outside the domain.

    Shape: alpha, beta, domain N x M; rows N x R -> N x R x M.
    """
    s = 1.0 if theta > 0 else -1.0
    a = (s * alpha).masked_fill(~domain, -math.inf)  # -inf: no admissible pair
    b = s * beta
    if rows is None:
        rows = torch.arange(a.shape[1], device=a.device).expand(len(a), -1)
    score = a.gather(1, rows)[:, :, None] + a[:, None, :]
    score.clamp_(min=0)
    other = b.gather(1, rows)[:, :, None] + b[:, None, :]
    score.mul_(other.neg_().clamp_(min=0))
    return score.scatter_(2, rows[:, :, None], 0.0)


def top_pair(alpha: Tensor, domain: Tensor, theta: float = 1.0
             ) -> tuple[Tensor, Tensor, Tensor]:
    """The best pair when beta = -alpha (softmax outputs): the two largest theta-signed
    alpha in the domain; admissible when their sum is positive. Same outputs as
    :func:`best_pairs`."""
    s = 1.0 if theta > 0 else -1.0
    a = (s * alpha).masked_fill(~domain, -math.inf)
    v, i = a.topk(2, dim=1)
    return i[:, 0], i[:, 1], v.sum(1) > 0


def best_pairs(alpha: Tensor, beta: Tensor, domain: Tensor,
               theta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """The admissible pair with the largest saliency per image, searched exactly.

    Returns: p, q (int64, N) and ok (bool, N): False where no pair is admissible.
    """
    s = 1.0 if theta > 0 else -1.0
    up = ((s * alpha > 0) & domain).sum(1).max()
    down = ((s * beta < 0) & domain).sum(1).max()
    key = (s * alpha if up <= down else -s * beta).masked_fill(~domain, -math.inf)
    r = max(1, int(min(up, down)))
    rows = key.topk(r, dim=1).indices
    n, m = alpha.shape
    per = max(1, CHUNK // (r * m))
    flat, best = [], []
    for i in range(0, n, per):
        sl = slice(i, i + per)
        v, j = pair_map(alpha[sl], beta[sl], domain[sl], theta, rows[sl]).flatten(1).max(1)
        best.append(v)
        flat.append(j)
    v, j = torch.cat(best), torch.cat(flat)
    p = rows.gather(1, (j // m)[:, None]).squeeze(1)
    return p, j % m, v > 0


def jacobian(xs: Tensor, logits: Tensor, target: Tensor,
             output: str = "logits") -> tuple[Tensor, Tensor]:
    """alpha = dF_t/dx and beta = sum_{j != t} dF_j/dx, flattened, for F the logits (two
    gradient calls) or the softmax probabilities (one call: beta = -alpha).

    Shape: xs N x C x H x W (the leaf that produced logits N x K) -> two N x M tensors.
    """
    if output == "probs":
        pt = logits.softmax(1).gather(1, target[:, None]).sum()
        (alpha,) = torch.autograd.grad(pt, xs)
        return alpha.flatten(1), -alpha.flatten(1)
    zt = logits.gather(1, target[:, None]).sum()
    (alpha,) = torch.autograd.grad(zt, xs, retain_graph=True)
    (total,) = torch.autograd.grad(logits.sum(), xs)
    return alpha.flatten(1), (total - alpha).flatten(1)


class JSMASettings(TargetedSettings):
    """The settings of :class:`JSMA` (its docstring): theta != 0, 0 < gamma <= 1, output
    "probs" or "logits"."""

    theta: float = 1.0
    gamma: float = 0.145
    pairs: bool = True
    output: str = "probs"
    seed: int = 0

    def check(self) -> None:
        super().check()
        if self.theta == 0 or not 0 < self.gamma <= 1:
            raise ThreatModelError(f"need theta != 0 and 0 < gamma <= 1, got {self.theta}, "
                                   f"{self.gamma}")
        one_of("output", self.output, ("probs", "logits"))


@register("jsma", knowledge="white", goal="targeted", norm="l0", kind="iterative",
          bounded=False)
class JSMA(Attack):
    """JSMA with the paper's pixel-pair search (or the lecture's single pixels).

    Args:
        theta: change applied to each chosen pixel (+1: increase to the maximum, the paper's
            MNIST setting; negative: the decrease variant).
        gamma: maximum distortion, the fraction of pixels that may change (0.145 in the paper).
        pairs: search pixel pairs (the paper's Algorithm 3) or single pixels (the lecture).
        output: differentiate the softmax probabilities ("probs", the default) or the logits
            ("logits"); see the module docstring.
        target_selection: how the base picks a target when none is given: "random",
            "least_likely" or "next".
        seed: seeds the random target selection.

    Returns (``info``): "iterations" per example.

    References: Papernot et al., IEEE EuroS&P 2016, arXiv:1511.07528.
    """

    targeted_only = True

    Settings = JSMASettings
    positional = ()
    norm = "l0"

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        assert target is not None  # targeted_only: the base chose one
        flat = x.flatten(1).clone()
        n, m = flat.shape
        domain = flat < 1 if self.theta > 0 else flat > 0
        width = 2 if self.pairs else 1
        iters = torch.zeros(n, dtype=torch.int64, device=x.device)
        idx = torch.arange(n, device=x.device)
        for _ in range(int(m * self.gamma) // width):
            xs = flat[idx].view(-1, *x.shape[1:]).requires_grad_(True)
            logits = model(xs)
            live = (logits.argmax(1) != target[idx]) & (domain[idx].sum(1) >= width)
            alpha, beta = jacobian(xs, logits, target[idx], self.output)
            idx, alpha, beta = idx[live], alpha[live], beta[live]
            if len(idx) == 0:
                break
            p, q, ok = self._choose(alpha, beta, domain[idx])
            idx, p, q = idx[ok], p[ok], q[ok]
            for pix in (p, q) if self.pairs else (p,):
                flat[idx, pix] = clip_box(flat[idx, pix] + self.theta)
                domain[idx, pix] = False
            iters[idx] += 1
        return Crafted(flat.view_as(x), info={"iterations": iters})

    def _choose(self, alpha: Tensor, beta: Tensor, domain: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        if self.pairs and self.output == "probs":
            return top_pair(alpha, domain, self.theta)
        if self.pairs:
            return best_pairs(alpha, beta, domain, self.theta)
        v, p = saliency_map(alpha, beta, domain, self.theta).max(1)
        return p, p, v > 0
