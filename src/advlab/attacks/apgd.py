r"""Auto-PGD (APGD-CE, APGD-DLR, APGD-T) and the AutoAttack-style ensemble.

APGD is PGD without a step size to tune. From :math:`x^{(0)}` and :math:`\eta = 2\epsilon`:

.. math::

    z^{(k+1)} &= P_S\big(x^{(k)} + \eta^{(k)}\, d(\nabla f(x^{(k)}))\big) \\
    x^{(k+1)} &= P_S\big(x^{(k)} + \alpha (z^{(k+1)} - x^{(k)})
                 + (1 - \alpha)(x^{(k)} - x^{(k-1)})\big), \qquad \alpha = 0.75

(the first step takes :math:`x^{(1)} = z^{(1)}`), where :math:`P_S` projects onto the eps-ball
intersected with the pixel box and :math:`d` is the ball's steepest direction (sign for Linf).
At the checkpoints :math:`w_j = \lceil p_j N_{iter} \rceil`, with :math:`p_0 = 0`,
:math:`p_1 = 0.22` and :math:`p_{j+1} = p_j + \max(p_j - p_{j-1} - 0.03, 0.06)`, the step
size of an example is halved, and the example restarted from its best point
:math:`x_{max}`, when

1. the objective rose in fewer than :math:`\rho = 0.75` of the steps since
   :math:`w_{j-1}`: :math:`\sum_{i=w_{j-1}}^{w_j - 1} 1[f(x^{(i+1)}) > f(x^{(i)})]
   < \rho\,(w_j - w_{j-1})`, or
2. the step size was not halved at :math:`w_{j-1}` and the best objective
   :math:`f_{max}` did not improve since then.

The objective is cross-entropy (APGD-CE), the difference of logits ratio (APGD-DLR,
:func:`advlab.losses.dlr`) or the logit margin. APGD-T runs the targeted DLR loss (or another
targeted loss) towards each of the top-k other classes (9 by default) in turn, each on the
examples still classified correctly.

:class:`AutoAttack` runs APGD-CE, APGD-T, FAB-T and Square in that order, each on the examples
the previous members left robust, and keeps for every example the first adversarial point
found (the worst case per example). Members are looked up in the registry at call time
(FAB-T comes from :mod:`advlab.attacks.fab`, Square from the black-box package); one that is
not registered is skipped and the skip is logged. :class:`AdaptiveEnsemble`
("autoattack-mt") keeps APGD-CE and APGD-T and spends the rest of the budget on APGD-T restarts
from output-diversified starts for the robust points closest to the boundary.

References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020, arXiv:2003.01690.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from advlab.attacks.base import (
    Attack,
    Crafted,
    Model,
    RowBlocks,
    available,
    first_of_each,
    get,
    is_success,
    logits_and_grad,
    register,
)
from advlab.attacks.gradient import GradientAttack, GradientSettings
from advlab.attacks.settings import BallSettings, at_least
from advlab.errors import LabelError, ThreatModelError
from advlab.losses import margin
from advlab.threat import broadcast_rows, project_box

log = logging.getLogger(__name__)

NORMS = ("linf", "l2")
LOSSES = ("ce", "dlr", "margin")


def checkpoint_fractions(p1: float = 0.22, decrease: float = 0.03,
                         min_length: float = 0.06) -> list[float]:
    """The fractions :math:`p_j` of the run at which the step size is checked.

    :math:`p_0 = 0`, :math:`p_1 = 0.22`, :math:`p_{j+1} = p_j + \\max(p_j - p_{j-1} - 0.03,
    0.06)`, while :math:`p_j \\le 1`.
    """
    p = [0.0, p1]
    while (nxt := p[-1] + max(p[-1] - p[-2] - decrease, min_length)) <= 1.0:
        p.append(nxt)
    return p


def checkpoints(steps: int) -> list[int]:
    """The iterations :math:`w_j = \\lceil p_j N_{iter} \\rceil` (w_0 = 0), duplicates removed.

    For 100 iterations: 0, 22, 41, 57, 70, 80, 87, 93, 99.
    """
    out: list[int] = []
    for p in checkpoint_fractions():
        w = math.ceil(round(p * steps, 6))  # round first: 0.41 * 100 is 41.00000000000001
        if w <= steps and (not out or w > out[-1]):
            out.append(w)
    return out


def _need_classes(num_classes: int, loss: str, targeted: bool) -> None:
    if loss == "dlr":
        need = 4 if targeted else 3
        if num_classes < need:
            what = "the targeted DLR loss" if targeted else "the DLR loss"
            raise LabelError(f"{what} needs at least {need} classes, the model has "
                             f"{num_classes}; use loss='ce'")


@dataclass
class RunState:
    """One APGD run, row by row. A row attacks one example (``owner``) under one target or
    random start; the rows of an example stop together once any of them fools the model.

    Attributes:
        owner: (R,) the example of each row.
        x, y, eps: the clean image, label and radius of each row.
        loss_target: (R,) the target of the objective (None: untargeted loss).
        goal_target: (R,) the target that defines success (None: misclassification).
        eta: (R,) step size. xk, xprev: the iterate and the one before it.
        fk, gk: objective and gradient at xk.
        xmax, fmax, gmax: the best point so far, its objective and gradient.
        count: steps since the last checkpoint that raised the objective.
        fmax_last, reduced_last: f_max and whether eta was halved, at the last checkpoint.
    """

    owner: Tensor
    x: Tensor
    y: Tensor
    eps: Tensor
    loss_target: Tensor | None
    goal_target: Tensor | None
    eta: Tensor
    xk: Tensor
    xprev: Tensor
    fk: Tensor
    gk: Tensor
    xmax: Tensor
    fmax: Tensor
    gmax: Tensor
    count: Tensor
    fmax_last: Tensor
    reduced_last: Tensor

    def rows(self, keep: Tensor) -> RunState:
        """The state of the rows selected by ``keep`` (bool or indices)."""
        return RunState(**{f.name: None if (v := getattr(self, f.name)) is None else v[keep]
                           for f in fields(self)})


#: rows (example x target x restart) run in one batch at most; larger jobs go in blocks
ROW_BLOCK = 4096


class APGDSettings(GradientSettings):
    """:class:`~advlab.attacks.gradient.GradientSettings` of APGD (linf or l2; ce, dlr or
    margin) and its own: rho and momentum in (0, 1], odi_steps >= 0."""

    norms: ClassVar[tuple[str, ...]] = NORMS
    losses: ClassVar[tuple[str, ...]] = LOSSES

    rho: float = 0.75
    momentum: float = 0.75
    odi_steps: int = 0

    def check(self) -> None:
        super().check()
        if not 0.0 < self.rho <= 1.0 or not 0.0 < self.momentum <= 1.0:
            raise ThreatModelError(f"rho and momentum must be in (0, 1], got {self.rho}, "
                                   f"{self.momentum}")
        at_least(0, odi_steps=self.odi_steps)


class APGDTSettings(APGDSettings):
    """:class:`APGDSettings` and the number of targets, n_targets >= 1."""

    n_targets: int = 9

    def check(self) -> None:
        super().check()
        at_least(1, n_targets=self.n_targets)


class APGD(GradientAttack):
    """Auto-PGD: PGD with momentum and the step-size schedule of Croce & Hein 2020.

    Restarts run side by side, one row per (example, restart), and an example's rows stop
    as soon as one of them is adversarial.

    Args:
        eps: radius of the ball; default 0.3 (linf) or 2.0 (l2).
        norm: "linf" or "l2".
        steps: iterations N_iter (100 in the paper); the run makes steps + 1 gradient calls.
        loss: "ce" (APGD-CE), "dlr" (APGD-DLR) or "margin" (the logit margin of
            :func:`advlab.losses.margin`); targeted calls use the targeted versions.
        restarts: runs from independent random starts, side by side.
        rho: the fraction of increasing steps below which the step size is halved (0.75).
        momentum: alpha, the weight of the new step against the previous one (0.75).
        random_start: start from a uniform point of the ball (else from x).
        early_stop: stop an example once it is adversarial (does not change success).
        odi_steps: output-diversified initialisation: from the start, this many steps of
            size eps up the gradient of w^T z(x), w uniform in [-1, 1]^K per row (0: off).
        seed: seeds the random starts.

    Shape: x N x C x H x W, y (N,); eps float or (N,).

    References: Croce & Hein, ICML 2020, arXiv:2003.01690 (Algorithm 1, Section 3).
    ODI: Tashiro, Song & Ermon, NeurIPS 2020, arXiv:2003.06878.
    """

    Settings = APGDSettings
    preset = {"steps": 100, "random_start": True}
    fixed = {"alpha": None, "source": None}

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Tensor:
        assert eps is not None
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        _need_classes(num_classes, self.loss, target is not None)
        owner = torch.arange(len(x), device=x.device).repeat(self.restarts)
        t = None if target is None else target[owner]
        return self.run_rows(model, x, y, eps, owner, t, t, generator)[0]

    # -- the schedule -----------------------------------------------------------------------

    def run_rows(self, model: Model, x: Tensor, y: Tensor, eps: Tensor, owner: Tensor,
                 loss_target: Tensor | None, goal_target: Tensor | None,
                 generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`run` on blocks of at most :data:`ROW_BLOCK` rows (whole examples per block).

        Returns x_adv (N x ...), f_max (N,) and fooled (N,) bool, as :meth:`run`."""
        out_x, out_f = x.clone(), torch.full_like(eps, float("-inf"))
        out_ok = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        examples = owner.unique()
        step = max(1, ROW_BLOCK * len(examples) // max(1, len(owner)))  # examples per block
        for i in range(0, len(examples), step):
            mine = examples[i:i + step]
            rows = torch.isin(owner, mine).nonzero().squeeze(1)
            lt = None if loss_target is None else loss_target[rows]
            gt = None if goal_target is None else goal_target[rows]
            bx, bf, bok = self.run(model, x, y, eps, owner[rows], lt, gt, generator)
            out_x[mine], out_f[mine], out_ok[mine] = bx[mine], bf[mine], bok[mine]
        return out_x, out_f, out_ok

    def run(self, model: Model, x: Tensor, y: Tensor, eps: Tensor, owner: Tensor,
            loss_target: Tensor | None, goal_target: Tensor | None,
            generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run (Algorithm 1) on the rows ``owner`` of the batch x.

        Args:
            x, y, eps: the batch (N examples).
            owner: (R,) the example each row attacks.
            loss_target: (R,) target of the objective per row (None: untargeted loss).
            goal_target: (R,) target that defines success per row (None: misclassification).

        Returns:
            x_adv (N x ...: the first adversarial point found for each example, else the best
            point x_max of its row with the highest objective, else x), that objective f_max
            (N,; -inf for examples without rows) and whether x_adv is adversarial (N,) bool.
        """
        b = self.ball
        xr, yr, er = x[owner], y[owner], eps[owner]
        out_x, out_f = x.clone(), torch.full_like(eps, float("-inf"))
        out_ok = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        x0 = project_box(xr, xr + b.random(xr, er, generator), er, b) if self.random_start \
            else xr
        if self.odi_steps:
            x0 = self._diversified(model, xr, x0, er, generator)
        f, g, logits = self._evaluate(model, x0, yr, loss_target, owner, generator)
        s = RunState(owner=owner, x=xr, y=yr, eps=er, loss_target=loss_target,
                     goal_target=goal_target, eta=2 * er, xk=x0, xprev=x0, fk=f, gk=g,
                     xmax=x0, fmax=f, gmax=g, count=torch.zeros_like(er), fmax_last=f,
                     reduced_last=torch.zeros_like(er, dtype=torch.bool))
        s = self._harvest(s, logits, s.xk, out_x, out_ok)
        marks = checkpoints(self.steps)
        for k in range(self.steps):
            if len(s.owner) == 0:
                break
            s, logits = self._step(model, s, generator, first=k == 0)
            s = self._harvest(s, logits, s.xk, out_x, out_ok)
            if k + 1 in marks[1:] and len(s.owner):
                j = marks.index(k + 1)
                s = self._check(s, marks[j] - marks[j - 1])
        live = ~out_ok[s.owner]
        if live.any():
            owners, fmax = s.owner[live], s.fmax[live]
            out_f.scatter_reduce_(0, owners, fmax, "amax")
            rows = live.nonzero().squeeze(1)[first_of_each(owners, fmax == out_f[owners])]
            out_x[s.owner[rows]] = s.xmax[rows]
        return out_x, out_f, out_ok

    def _diversified(self, model: Model, x: Tensor, x0: Tensor, eps: Tensor,
                     generator: torch.Generator) -> Tensor:
        """ODI: ``odi_steps`` steps of size eps from x0 along the steepest ascent of w^T z."""
        b, w = self.ball, None

        def along_w(z: Tensor, rows: slice) -> Tensor:
            nonlocal w
            if w is None:  # one direction per row for every step, drawn once K is known
                w = 2 * torch.rand((len(x0), z.shape[1]), generator=generator, device=z.device,
                                   dtype=z.dtype) - 1
            return (z * w[rows]).sum(1)

        for _ in range(self.odi_steps):
            _, g = logits_and_grad(model, x0, along_w)
            x0 = project_box(x, x0 + broadcast_rows(eps, x0) * b.steepest(g), eps, b)
        return x0.detach()

    def _evaluate(self, model: Model, xa: Tensor, y: Tensor, loss_target: Tensor | None,
                  owner: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Objective (R,), its gradient and the logits at xa (through :meth:`gradient`;
        ``owner``: the example of each row)."""
        grad, logits = self.gradient(model, xa, y, loss_target, owner, generator)
        with torch.no_grad():
            f = self.objective(logits, y, loss_target)
        return f, grad, logits

    def _step(self, model: Model, s: RunState, generator: torch.Generator,
              first: bool) -> tuple[RunState, Tensor]:
        """x^{k+1} from x^k and x^{k-1}; the objective and the running best updated."""
        b, xk = self.ball, s.xk
        z = project_box(s.x, xk + broadcast_rows(s.eta, xk) * b.steepest(s.gk), s.eps, b)
        if first:
            x_new = z
        else:
            a = self.momentum
            x_new = project_box(s.x, xk + a * (z - xk) + (1 - a) * (xk - s.xprev), s.eps, b)
        f, g, logits = self._evaluate(model, x_new, s.y, s.loss_target, s.owner, generator)
        s.count = s.count + (f > s.fk).to(f.dtype)
        better = f > s.fmax
        s.xmax = torch.where(broadcast_rows(better, x_new), x_new, s.xmax)
        s.gmax = torch.where(broadcast_rows(better, g), g, s.gmax)
        s.fmax = torch.where(better, f, s.fmax)
        s.xprev, s.xk, s.fk, s.gk = xk, x_new, f, g
        return s, logits

    def _check(self, s: RunState, length: int) -> RunState:
        """At checkpoint w_j: halve eta and restart from x_max where condition 1 or 2 holds."""
        cond1 = s.count < self.rho * length
        cond2 = ~s.reduced_last & (s.fmax <= s.fmax_last)
        reduce = cond1 | cond2
        s.eta = torch.where(reduce, s.eta / 2, s.eta)
        s.xk = torch.where(broadcast_rows(reduce, s.xk), s.xmax, s.xk)
        s.gk = torch.where(broadcast_rows(reduce, s.gk), s.gmax, s.gk)
        s.fk = torch.where(reduce, s.fmax, s.fk)
        s.reduced_last, s.fmax_last = reduce, s.fmax.clone()
        s.count = torch.zeros_like(s.count)
        return s

    def _harvest(self, s: RunState, logits: Tensor, xa: Tensor, out_x: Tensor,
                 out_ok: Tensor) -> RunState:
        """Store the examples that became adversarial at xa (one row each); when early
        stopping, drop every row of those examples."""
        ok = is_success(logits, s.y, s.goal_target) & ~out_ok[s.owner]
        if not ok.any():
            return s
        rows = ok.nonzero().squeeze(1)
        rows = rows[first_of_each(s.owner[rows])]
        out_x[s.owner[rows]] = xa[rows]
        out_ok[s.owner[rows]] = True
        return s.rows(~out_ok[s.owner]) if self.early_stop else s


@register("apgd-ce", knowledge="white", goal="both", norm="linf", kind="iterative")
@register("apgd-ce-l2", knowledge="white", goal="both", norm="l2", kind="iterative",
          defaults={"norm": "l2"})
@register("apgd-dlr", knowledge="white", goal="both", norm="linf", kind="iterative",
          defaults={"loss": "dlr"})
@register("apgd-dlr-l2", knowledge="white", goal="both", norm="l2", kind="iterative",
          defaults={"norm": "l2", "loss": "dlr"})
class _RegisteredAPGD(APGD):
    """APGD-CE / APGD-DLR, Linf and L2 (see :class:`APGD`)."""


@register("apgd-t", knowledge="white", goal="both", norm="linf", kind="iterative")
@register("apgd-t-l2", knowledge="white", goal="both", norm="l2", kind="iterative",
          defaults={"norm": "l2"})
class APGDT(APGD):
    r"""APGD-T: APGD on the targeted DLR loss
    :math:`-(z_y - z_t) / (z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2)`, towards each of the
    ``n_targets`` classes with the highest clean logits other than y, on the examples still
    classified correctly (untargeted success). As in the paper, the targets run one after
    another, each (with its restarts) on the examples that no earlier run has fooled, so an
    example that falls to its first target costs no run towards the others; an example
    never fooled gets the point with the highest objective over its runs. Given an explicit
    target, one targeted run towards it (success means the target is predicted).

    Args:
        n_targets: number of target classes tried (9 in the paper, capped at K - 1).
        loss: the targeted objective: "dlr" (the paper's), "margin"
            (:math:`z_t - \max_{i \ne t} z_i`, as MultiTargeted) or "ce".
        (others as :class:`APGD`.)

    References: Croce & Hein, ICML 2020, arXiv:2003.01690 (Section 4, APGD-T).
    """

    Settings = APGDTSettings
    preset = {"loss": "dlr"}

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Tensor:
        assert eps is not None
        with torch.no_grad():
            logits = model(x)
        _need_classes(logits.shape[1], self.loss, targeted=True)
        if target is not None:
            return super().perturb(model, x, y, target, eps, generator)
        best, best_f = x.clone(), torch.full_like(eps, float("-inf"))
        fooled = is_success(logits, y, None)
        for t in self.targets(logits, y):
            for _ in range(self.restarts):
                todo = (~fooled).nonzero().squeeze(1)
                if len(todo) == 0:
                    return best
                x_adv, f, ok = self.run_rows(model, x, y, eps, todo, t[todo], None, generator)
                take = ok | (f > best_f)
                best[take], best_f[take] = x_adv[take], f[take]
                fooled |= ok
        return best

    def targets(self, logits: Tensor, y: Tensor) -> Tensor:
        """The targets in the order tried, ``n_targets`` x N: row j holds each example's
        class with the (j+1)-th highest clean logit other than y."""
        k = min(self.n_targets, logits.shape[1] - 1)
        ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
        return ranked[:, :k].T


MEMBERS = {"linf": ("apgd-ce", "apgd-t", "fab-t", "square"),
           "l2": ("apgd-ce-l2", "apgd-t-l2", "fab-t-l2", "square-l2")}
# the published settings of the standard version where a member's own default differs
MEMBER_DEFAULTS: dict[str, dict[str, Any]] = {"square": {"max_queries": 5000},
                                              "square-l2": {"max_queries": 5000}}


class AutoAttackSettings(BallSettings):
    """The settings of :class:`AutoAttack` (its docstring): the ball (linf or l2), the
    members (default :data:`MEMBERS` for the norm) and their keyword arguments, merged over
    :data:`MEMBER_DEFAULTS`."""

    norms: ClassVar[tuple[str, ...]] = NORMS

    members: tuple[str, ...] | list[str] | None = None
    member_kwargs: Mapping[str, Mapping[str, Any]] | None = None
    seed: int = 0

    def check(self) -> None:
        super().check()
        self.resolve("members", tuple(self.default_members() if self.members is None
                                      else self.members))
        given = self.member_kwargs or {}
        self.resolve("member_kwargs", {name: {**MEMBER_DEFAULTS.get(name, {}),
                                              **given.get(name, {})}
                                       for name in {*MEMBER_DEFAULTS, *given}})

    def default_members(self) -> tuple[str, ...]:
        """The members run when none are given: :data:`MEMBERS` for the norm."""
        return MEMBERS[self.norm]


class AdaptiveSettings(AutoAttackSettings):
    """The settings of :class:`AdaptiveEnsemble` (its docstring): AutoAttack's first two
    members, schedule fractions and closest in (0, 1], losses among :data:`LOSSES` (at least
    one), odi_steps and closest_restarts >= 0."""

    schedule: tuple[float, ...] = (1.0, 0.5, 0.5, 0.5)
    losses: tuple[str, ...] = ("dlr",)
    odi_steps: int = 2
    closest: float = 0.05
    closest_restarts: int = 64

    def check(self) -> None:
        super().check()
        if not all(0 < f <= 1 for f in (*self.schedule, self.closest)):
            raise ThreatModelError(f"schedule fractions and closest must be in (0, 1], got "
                                   f"{self.schedule}, {self.closest}")
        at_least(0, closest_restarts=self.closest_restarts)
        if not self.losses or any(loss not in LOSSES for loss in self.losses):
            raise ThreatModelError(f"losses must be among {', '.join(LOSSES)}, got "
                                   f"{self.losses}")
        self.resolve("schedule", tuple(self.schedule))
        self.resolve("losses", tuple(self.losses))
        at_least(0, odi_steps=self.odi_steps)

    def default_members(self) -> tuple[str, ...]:
        """APGD-CE and APGD-T: the first two of :data:`MEMBERS` for the norm."""
        return MEMBERS[self.norm][:2]


@register("autoattack", knowledge="white", goal="untargeted", norm="linf", kind="iterative")
@register("autoattack-l2", knowledge="white", goal="untargeted", norm="l2", kind="iterative",
          defaults={"norm": "l2"})
class AutoAttack(Attack):
    """AutoAttack-style ensemble (standard version): APGD-CE, APGD-T, FAB-T, Square.

    Each member attacks only the examples that every earlier member left correctly
    classified; an example's output is the first adversarial point found, else the point
    with the lowest true-class margin over the members (the worst case per example).
    Members are built from the registry by name at call time with the published defaults
    (APGD: 100 iterations, 1 restart, 9 target classes; Square: 5,000 queries, p_init 0.8),
    so a member registered later joins automatically. Members that are not registered are
    skipped and the skip is logged. The black-box member receives the plain model (it wraps
    it in its own Oracle); its query counts go to ``info``. On CPU the members see the model
    through :class:`~advlab.attacks.base.RowBlocks`: the same passes, in cache-sized blocks
    (channels-last for a conv net that takes that layout).

    Args:
        eps: radius; default 0.3 (linf) or 2.0 (l2).
        norm: "linf" or "l2".
        members: registry names, in order; default :data:`MEMBERS` for the norm.
        member_kwargs: keyword arguments per member name, over :data:`MEMBER_DEFAULTS`.
        seed: passed to every member.

    Returns (in ``AttackResult.info``): ``members`` (names run), ``robust_after`` (name ->
    number of examples still robust after it), ``skipped``, ``queries`` (per black-box member),
    ``seconds`` (name -> wall time of the member).

    References: Croce & Hein, ICML 2020, arXiv:2003.01690.
    """

    Settings = AutoAttackSettings

    def resolve(self) -> tuple[list[str], list[str]]:
        """(members registered with this norm, members skipped)."""
        reg = available()
        run = [m for m in self.members if m in reg and reg[m].norm == self.norm]
        return run, [m for m in self.members if m not in run]

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        assert eps is not None
        if target is not None:
            raise ThreatModelError("autoattack is untargeted (APGD-T uses its own targets); "
                                   "use apgd-t or apgd-ce for a targeted attack")
        names, skipped = self.resolve()
        if skipped:
            log.info("autoattack: members not available, skipped: %s", ", ".join(skipped))
        worst = WorstCase(model, x, y, eps)
        worst.info.update(members=names, skipped=skipped)
        for name in names:
            worst.run(name, get(name, eps=self.eps, seed=self.seed,
                                **self.member_kwargs.get(name, {})))
        return Crafted(worst.best, info=worst.info)


class WorstCase:
    """The per-example worst case over the members of an ensemble: the first adversarial
    point found, else the point with the lowest true-class margin (the closest to the
    boundary). Each member attacks only the examples still robust.

    Attributes:
        best: the current output per example. margin: its true-class margin (N,).
        robust: (N,) bool, not yet fooled. info: per member name ``robust_after``,
        ``attacked`` (examples it ran on), ``queries``, ``seconds``.
    """

    def __init__(self, model: Model, x: Tensor, y: Tensor, eps: Tensor) -> None:
        self.model = RowBlocks.around(model, x)  # the members run many rows at once
        self.x, self.y, self.eps = x, y, eps
        with torch.no_grad():
            logits = model(x)
        self.best, self.margin = x.clone(), margin(logits, y)
        self.robust = ~is_success(logits, y, None)
        self.info: dict[str, Any] = {"robust_after": {}, "attacked": {}, "queries": {},
                                     "seconds": {}}

    def closest(self, fraction: float) -> Tensor:
        """The ``fraction`` of the robust examples (at least one, if any) closest to the
        boundary: the lowest true-class margins of the worst case so far."""
        todo = self.robust.nonzero().squeeze(1)
        return todo[self.margin[todo].argsort()[:math.ceil(fraction * len(todo))]]

    def run(self, name: str, member: Attack, todo: Tensor | None = None) -> None:
        """Run ``member`` on the examples ``todo`` (default: every robust one) and keep the
        worst case; its time, queries and the robust count are noted under ``name``."""
        todo = self.robust.nonzero().squeeze(1) if todo is None else todo
        if len(todo) == 0:
            return
        self.info["attacked"][name] = len(todo)
        start = time.perf_counter()
        res = member(self.model, self.x[todo], self.y[todo], eps=self.eps[todo])
        self.info["seconds"][name] = self.info["seconds"].get(name, 0.0) + \
            time.perf_counter() - start
        m = margin(res.logits, self.y[todo])
        take = res.success | (m < self.margin[todo])
        self.best[todo[take]] = res.x_adv[take]
        self.margin[todo] = torch.where(take, m, self.margin[todo])
        self.robust[todo[res.success]] = False
        self.info["robust_after"][name] = int(self.robust.sum())
        if res.queries is not None:
            q = torch.zeros(len(self.x), dtype=torch.int64, device=self.x.device)
            q[todo] = res.queries
            self.info["queries"][name] = q
        log.info("%s: %d of %d still robust", name, int(self.robust.sum()), len(self.x))


@register("autoattack-mt", knowledge="white", goal="untargeted", norm="linf", kind="iterative")
@register("autoattack-mt-l2", knowledge="white", goal="untargeted", norm="l2",
          kind="iterative", defaults={"norm": "l2"})
class AdaptiveEnsemble(AutoAttack):
    """APGD-CE and multi-targeted APGD-T, then restarts spent where they pay: a stronger
    evaluation than AutoAttack at a lower cost on robust points.

    After APGD-CE and APGD-T (AutoAttack's first two members, 100 iterations, 9 targets),
    the examples still robust are ranked by their true-class margin (the worst case over
    everything run so far) and each round of ``schedule`` runs APGD-T again, from an
    output-diversified start (ODI, ``odi_steps``), a new seed and the next loss of
    ``losses`` (default: the targeted DLR; MultiTargeted's logit margin is the other
    landscape on offer), on the fraction of them closest to the boundary (A3's adaptive
    allocation). FAB-T and Square are left out: on robust points they cost AutoAttack about
    3-5 APGD-T runs per point and fooled none of the 82 points the APGD members left on 100
    mnist-cnn-trades images at eps 0.3; the default schedule (all, then the closest half
    three times) spends 2.5 APGD-T runs per robust point. Last, the ``closest`` fraction of
    the examples still robust (the few that one lucky start decides) get
    ``closest_restarts`` untargeted APGD-DLR runs side by side, each from its own random
    start (with ODI) and a ninth of an APGD-T run's cost. The output is the per-example
    worst case.

    Args:
        eps: radius; default 0.3 (linf) or 2.0 (l2).
        norm: "linf" or "l2".
        schedule: fractions of the robust examples attacked in each extra round.
        losses: APGD-T's loss in the extra rounds, in turn ("dlr", "margin" or "ce").
        odi_steps: ODI steps before each extra round's run.
        closest: the fraction of the robust examples given the last round's restarts.
        closest_restarts: APGD-DLR restarts per example in the last round (0: none).
        seed: the first members' seed; round r uses seed + r.

    Returns (``info``): as :class:`AutoAttack`, rounds named "apgd-t-odi-<r>" and
    "apgd-dlr-closest".

    References: Croce & Hein, ICML 2020, arXiv:2003.01690 (AutoAttack); Gowal et al.,
    arXiv:1910.09338 (MultiTargeted); Tashiro, Song & Ermon, NeurIPS 2020, arXiv:2003.06878
    (ODI); Liu et al., "Practical evaluation of adversarial robustness via adaptive auto
    attack", CVPR 2022 (A3, adaptive restarts).
    """

    Settings = AdaptiveSettings
    fixed = {"members": None, "member_kwargs": None}

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        assert eps is not None
        if target is not None:
            raise ThreatModelError("autoattack-mt is untargeted; use apgd-t for a targeted "
                                   "attack")
        worst = WorstCase(model, x, y, eps)
        names, _ = self.resolve()
        for name in names:
            worst.run(name, get(name, eps=self.eps, seed=self.seed))
        for r, fraction in enumerate(self.schedule, 1):
            member = APGDT(self.eps, norm=self.norm, odi_steps=self.odi_steps,
                           loss=self.losses[(r - 1) % len(self.losses)], seed=self.seed + r)
            worst.run(f"apgd-t-odi-{r}", member, worst.closest(fraction))
        if self.closest_restarts:
            member = APGD(self.eps, norm=self.norm, loss="dlr", odi_steps=self.odi_steps,
                          restarts=self.closest_restarts,
                          seed=self.seed + len(self.schedule) + 1)
            worst.run("apgd-dlr-closest", member, worst.closest(self.closest))
        worst.info.update(members=list(worst.info["robust_after"]), skipped=[])
        return Crafted(worst.best, info=worst.info)
