r"""DeepFool: the closest decision boundary of the linearised classifier, iterated.

At the current point :math:`x_i`, with y the true class and k each candidate class,

.. math::  f'_k = Z_k(x_i) - Z_y(x_i), \qquad w'_k = \nabla Z_k(x_i) - \nabla Z_y(x_i),

.. math::  \hat l = \arg\min_{k \ne y} \frac{|f'_k|}{\|w'_k\|_q}, \qquad
           r_i = \frac{|f'_{\hat l}|}{\|w'_{\hat l}\|_q^q}\, |w'_{\hat l}|^{q-1}
                 \odot \mathrm{sign}(w'_{\hat l})

with q the dual exponent of the attack's norm p (q = 2 for L2: :math:`r_i = |f'| w' /
\|w'\|_2^2`; q = 1 for Linf: :math:`r_i = |f'| \mathrm{sign}(w') / \|w'\|_1`). The
perturbations add up, :math:`x_{i+1} = \mathrm{clip}(x + (1 + \eta) \sum_j r_j)`, until the
prediction at :math:`x_{i+1}` is not y. The overshoot :math:`\eta` (0.02) lands beyond the
boundary; for a linear classifier one step gives the exact minimal perturbation
:math:`r = -f(x)\, w / \|w\|_2^2` (times :math:`1 + \eta`).

References: Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to
fool deep neural networks", CVPR 2016, arXiv:1511.04599.
"""
from __future__ import annotations

import torch
from torch import Tensor

from advlab.attacks.base import Attack, Crafted, Model, register
from advlab.attacks.settings import Settings, at_least, one_of
from advlab.threat import clip_box

TINY = 1e-4  # added to |f'| as in the authors' code, so each step crosses the boundary


class DeepFoolSettings(Settings):
    """The settings of :class:`DeepFool` (its docstring): norm l2 or linf, overshoot >= 0,
    max_iter >= 1, candidates >= 2 or None."""

    norm: str = "l2"
    overshoot: float = 0.02
    max_iter: int = 50
    candidates: int | None = 10
    seed: int = 0

    def check(self) -> None:
        one_of("norm", self.norm, ("l2", "linf"))
        at_least(0, overshoot=self.overshoot)
        at_least(1, max_iter=self.max_iter)
        at_least(2, candidates=self.candidates)


@register("deepfool", knowledge="white", goal="untargeted", norm="l2", kind="iterative",
          bounded=False)
@register("deepfool-linf", knowledge="white", goal="untargeted", norm="linf",
          kind="iterative", bounded=False, defaults={"norm": "linf"})
class DeepFool(Attack):
    """DeepFool, L2 or Linf, minimum-norm and untargeted.

    Args:
        norm: "l2" or "linf".
        overshoot: eta; the output is x + (1 + eta) * the accumulated perturbation.
        max_iter: most linearisation steps per example.
        candidates: number of classes considered, the true one included: the
            ``candidates - 1`` classes with the highest clean logits (10, as in the paper;
            None for all classes).
        seed: unused (deterministic); kept for the common interface.

    Every example stops at its first adversarial iterate. An example still classified y after
    ``max_iter`` steps (rare: the box may block the way) gets its overshoot doubled until it
    is adversarial or 1 + eta reaches 2**10, so the output lands beyond the boundary.

    Returns (``info``): "iterations" per example.

    References: Moosavi-Dezfooli et al., CVPR 2016, arXiv:1511.04599.
    """

    Settings = DeepFoolSettings
    positional = ()

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        with torch.no_grad():
            classes = self._classes(model(x), y)
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        iters = torch.zeros(len(x), dtype=torch.int64, device=x.device)
        idx = torch.arange(len(x), device=x.device)
        for _ in range(self.max_iter):
            xs = x_adv[idx].requires_grad_(True)
            logits = model(xs)
            live = logits.argmax(1) == y[idx]
            if not live.all():  # the fooled leave; backward passes only for the others
                idx = idx[live]
                if len(idx) == 0:
                    break
                xs = x_adv[idx].requires_grad_(True)
                logits = model(xs)
            r = self._step(xs, logits, classes[idx])
            with torch.no_grad():
                r_tot[idx] += r
                x_adv[idx] = clip_box(x[idx] + (1 + self.overshoot) * r_tot[idx])
                iters[idx] += 1
        x_adv = self._push(model, x, y, r_tot, x_adv)
        return Crafted(x_adv, info={"iterations": iters})

    def _classes(self, logits: Tensor, y: Tensor) -> Tensor:
        """Candidate classes per example: the true class first, then the highest others."""
        k = logits.shape[1] if self.candidates is None else min(self.candidates, logits.shape[1])
        others = logits.scatter(1, y[:, None], float("-inf")).topk(k - 1, dim=1).indices
        return torch.cat([y[:, None], others], 1)

    def _step(self, xs: Tensor, logits: Tensor, classes: Tensor) -> Tensor:
        """r_i for the rows of xs: the step to the closest linearised boundary."""
        z = logits.gather(1, classes)  # n x k, column 0 is the true class
        f = z[:, 1:] - z[:, :1]  # f'_k, n x (k-1)
        k = f.shape[1]
        w = torch.stack([torch.autograd.grad(f[:, j].sum(), xs, retain_graph=j < k - 1)[0]
                         for j in range(k)], 1).flatten(2)  # w'_k, n x (k-1) x D
        f = f.detach()
        q = 2 if self.norm == "l2" else 1
        wn = w.norm(p=q, dim=2).clamp_min(1e-12)
        best = (f.abs() / wn).argmin(1)
        wl = w[torch.arange(len(w)), best]
        fl = f.gather(1, best[:, None]).squeeze(1).abs() + TINY
        wnl = wn.gather(1, best[:, None]).squeeze(1)
        r = fl[:, None] * (wl / wnl[:, None] ** 2 if q == 2 else wl.sign() / wnl[:, None])
        return r.view(-1, *xs.shape[1:])

    def _push(self, model: Model, x: Tensor, y: Tensor, r_tot: Tensor, x_adv: Tensor) -> Tensor:
        """Examples still classified y: double the overshoot until they are not (or give up)."""
        scale = 1 + self.overshoot
        for _ in range(10):
            with torch.no_grad():
                stuck = (model(x_adv).argmax(1) == y) & (r_tot.flatten(1).abs().amax(1) > 0)
            if not stuck.any():
                break
            scale *= 2
            x_adv[stuck] = clip_box(x[stuck] + scale * r_tot[stuck])
        return x_adv
