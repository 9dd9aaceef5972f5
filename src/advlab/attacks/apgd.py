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

The objective is cross-entropy (APGD-CE) or the difference of logits ratio (APGD-DLR,
:func:`advlab.losses.dlr`). APGD-T runs the targeted DLR loss towards each of the top-k other
classes in turn (9 by default), on the examples still classified correctly.

:class:`AutoAttack` runs APGD-CE, APGD-T, FAB-T and Square in that order, each on the examples
the previous members left robust, and keeps for every example the first adversarial point
found (the worst case per example). Members are looked up in the registry at call time
(FAB-T comes from :mod:`advlab.attacks.fab`, Square from the black-box package); one that is
not registered is skipped and the skip is logged.

References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020, arXiv:2003.01690.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from advlab.attacks.base import (
    Attack,
    Crafted,
    Model,
    available,
    get,
    is_success,
    register,
)
from advlab.attacks.gradient import GradientAttack
from advlab.errors import LabelError, ThreatModelError
from advlab.losses import margin
from advlab.threat import _expand, project_box

log = logging.getLogger(__name__)

NORMS = ("linf", "l2")
DEFAULT_EPS = {"linf": 0.3, "l2": 2.0}


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


class APGD(GradientAttack):
    """Auto-PGD: PGD with momentum and the step-size schedule of Croce & Hein 2020.

    Args:
        eps: radius of the ball; default 0.3 (linf) or 2.0 (l2).
        norm: "linf" or "l2".
        steps: iterations N_iter (100 in the paper); the run makes steps + 1 gradient calls.
        loss: "ce" (APGD-CE) or "dlr" (APGD-DLR); targeted calls use the targeted versions.
        restarts: runs from new random starts for the examples still robust.
        rho: the fraction of increasing steps below which the step size is halved (0.75).
        momentum: alpha, the weight of the new step against the previous one (0.75).
        random_start: start from a uniform point of the ball (else from x).
        early_stop: stop moving an example once it is adversarial (does not change success).
        seed: seeds the random starts.

    Shape: x N x C x H x W, y (N,); eps float or (N,).

    References: Croce & Hein, ICML 2020, arXiv:2003.01690 (Algorithm 1, Section 3).
    """

    def __init__(self, eps: float | None = None, *, norm: str = "linf", steps: int = 100,
                 loss: str = "ce", restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75, random_start: bool = True, early_stop: bool = True,
                 seed: int = 0) -> None:
        if norm not in NORMS:
            raise ThreatModelError(f"APGD supports norms {', '.join(NORMS)}, got {norm!r}")
        if loss not in ("ce", "dlr"):
            raise ThreatModelError(f"APGD losses are 'ce' and 'dlr', got {loss!r}")
        if not 0.0 < rho <= 1.0 or not 0.0 < momentum <= 1.0:
            raise ThreatModelError(f"rho and momentum must be in (0, 1], got {rho}, {momentum}")
        super().__init__(DEFAULT_EPS[norm] if eps is None else eps, norm=norm, steps=steps,
                         random_start=random_start, restarts=restarts, loss=loss,
                         early_stop=early_stop, seed=seed)
        self.rho, self.momentum = rho, momentum

    # -- the schedule -----------------------------------------------------------------------

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Tensor:
        assert eps is not None
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        _need_classes(num_classes, self.loss, target is not None)
        best, _ = self._restarts(model, x, y, target, target, eps, generator)
        return best

    def _restarts(self, model: Model, x: Tensor, y: Tensor, loss_target: Tensor | None,
                  goal_target: Tensor | None, eps: Tensor,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``restarts`` runs on the examples not yet fooled; returns x_adv and fooled (N,)."""
        best = x.clone()
        best_f = torch.full_like(eps, float("-inf"))
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            todo = (~fooled).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            lt = None if loss_target is None else loss_target[todo]
            gt = None if goal_target is None else goal_target[todo]
            x_run, f_run, ok = self.run(model, x[todo], y[todo], lt, gt, eps[todo], generator)
            take = ok | (f_run > best_f[todo])
            best[todo[take]] = x_run[take]
            best_f[todo] = torch.where(take, f_run, best_f[todo])
            fooled[todo] = ok
        return best, fooled

    def run(self, model: Model, x: Tensor, y: Tensor, loss_target: Tensor | None,
            goal_target: Tensor | None, eps: Tensor,
            generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run (Algorithm 1).

        Args:
            loss_target: the target of the objective (None: untargeted loss).
            goal_target: the target that defines success (None: misclassification).

        Returns:
            x_adv (the first adversarial point found, else the best point x_max), the best
            objective f_max (N,), and whether x_adv is adversarial (N,) bool.
        """
        b = self.ball
        out_x, out_f = x.clone(), torch.full_like(eps, float("-inf"))
        out_ok = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        x0 = x
        if self.random_start:
            x0 = project_box(x, x + b.random(x, eps, generator), eps, b)
        f, g, logits = self._evaluate(model, x0, y, loss_target,
                                      torch.arange(len(x), device=x.device), generator)
        s = {"idx": torch.arange(len(x), device=x.device), "x": x, "y": y, "eps": eps,
             "eta": 2 * eps, "xk": x0, "xprev": x0, "fk": f, "gk": g, "xmax": x0,
             "fmax": f, "gmax": g, "count": torch.zeros_like(eps),
             "fmax_last": f, "reduced_last": torch.zeros_like(eps, dtype=torch.bool)}
        if loss_target is not None:
            s["lt"] = loss_target
        if goal_target is not None:
            s["gt"] = goal_target
        s = self._harvest(s, logits, s["xk"], out_x, out_ok)
        marks = checkpoints(self.steps)
        for k in range(self.steps):
            if len(s["idx"]) == 0:
                break
            s, logits = self._step(model, s, generator, first=k == 0)
            s = self._harvest(s, logits, s["xk"], out_x, out_ok)
            if k + 1 in marks[1:] and len(s["idx"]):
                j = marks.index(k + 1)
                s = self._check(s, marks[j] - marks[j - 1])
        rest = ~out_ok[s["idx"]]
        out_x[s["idx"][rest]] = s["xmax"][rest]
        out_f[s["idx"][rest]] = s["fmax"][rest]
        return out_x, out_f, out_ok

    def _evaluate(self, model: Model, xa: Tensor, y: Tensor, loss_target: Tensor | None,
                  idx: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Objective (N,), its gradient and the logits at xa (through :meth:`gradient`;
        ``idx``: the rows of the run that xa holds)."""
        grad, logits = self.gradient(model, xa, y, loss_target, idx, generator)
        with torch.no_grad():
            f = self.objective(logits, y, loss_target)
        return f, grad, logits

    def _step(self, model: Model, s: dict[str, Tensor], generator: torch.Generator,
              first: bool) -> tuple[dict[str, Tensor], Tensor]:
        """x^{k+1} from x^k and x^{k-1}; the objective and the running best updated."""
        b, x, eps = self.ball, s["x"], s["eps"]
        xk = s["xk"]
        z = project_box(x, xk + _expand(s["eta"], xk) * b.steepest(s["gk"]), eps, b)
        if first:
            x_new = z
        else:
            a = self.momentum
            x_new = project_box(x, xk + a * (z - xk) + (1 - a) * (xk - s["xprev"]), eps, b)
        f, g, logits = self._evaluate(model, x_new, s["y"], s.get("lt"), s["idx"], generator)
        s["count"] = s["count"] + (f > s["fk"]).to(f.dtype)
        better = f > s["fmax"]
        s["xmax"] = torch.where(_expand(better, x_new), x_new, s["xmax"])
        s["gmax"] = torch.where(_expand(better, g), g, s["gmax"])
        s["fmax"] = torch.where(better, f, s["fmax"])
        s["xprev"], s["xk"], s["fk"], s["gk"] = xk, x_new, f, g
        return s, logits

    def _check(self, s: dict[str, Tensor], length: int) -> dict[str, Tensor]:
        """At checkpoint w_j: halve eta and restart from x_max where condition 1 or 2 holds."""
        cond1 = s["count"] < self.rho * length
        cond2 = ~s["reduced_last"] & (s["fmax"] <= s["fmax_last"])
        reduce = cond1 | cond2
        s["eta"] = torch.where(reduce, s["eta"] / 2, s["eta"])
        s["xk"] = torch.where(_expand(reduce, s["xk"]), s["xmax"], s["xk"])
        s["gk"] = torch.where(_expand(reduce, s["gk"]), s["gmax"], s["gk"])
        s["fk"] = torch.where(reduce, s["fmax"], s["fk"])
        s["reduced_last"], s["fmax_last"] = reduce, s["fmax"].clone()
        s["count"] = torch.zeros_like(s["count"])
        return s

    def _harvest(self, s: dict[str, Tensor], logits: Tensor, xa: Tensor, out_x: Tensor,
                 out_ok: Tensor) -> dict[str, Tensor]:
        """Store the examples that became adversarial at xa; drop them when early stopping."""
        ok = is_success(logits, s["y"], s.get("gt")) & ~out_ok[s["idx"]]
        if ok.any():
            out_x[s["idx"][ok]] = xa[ok]
            out_ok[s["idx"][ok]] = True
        if self.early_stop and ok.any():
            keep = ~ok
            s = {name: v[keep] for name, v in s.items()}
        return s


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
    ``n_targets`` classes with the highest clean logits other than y, in turn, on the examples
    still classified correctly (untargeted success). Given an explicit target, one targeted
    run towards it (success means the target is predicted).

    Args:
        n_targets: number of target classes tried (9 in the paper, capped at K - 1).
        (others as :class:`APGD`; the loss is always the targeted DLR.)

    References: Croce & Hein, ICML 2020, arXiv:2003.01690 (Section 4, APGD-T).
    """

    def __init__(self, eps: float | None = None, *, norm: str = "linf", steps: int = 100,
                 n_targets: int = 9, restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75, random_start: bool = True, early_stop: bool = True,
                 seed: int = 0) -> None:
        if n_targets < 1:
            raise ThreatModelError(f"n_targets must be >= 1, got {n_targets}")
        super().__init__(eps, norm=norm, steps=steps, loss="dlr", restarts=restarts, rho=rho,
                         momentum=momentum, random_start=random_start, early_stop=early_stop,
                         seed=seed)
        self.n_targets = n_targets

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Tensor:
        assert eps is not None
        with torch.no_grad():
            logits = model(x)
        _need_classes(logits.shape[1], "dlr", targeted=True)
        if target is not None:
            return self._restarts(model, x, y, target, target, eps, generator)[0]
        ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
        best = x.clone()
        robust = ~is_success(logits, y, None)
        for i in range(min(self.n_targets, logits.shape[1] - 1)):
            todo = robust.nonzero().squeeze(1)
            if len(todo) == 0:
                break
            t = ranked[todo, i]
            x_run, ok = self._restarts(model, x[todo], y[todo], t, None, eps[todo], generator)
            best[todo] = x_run
            robust[todo[ok]] = False
            log.debug("APGD-T target rank %d: %d still robust", i + 1, int(robust.sum()))
        return best


MEMBERS = {"linf": ("apgd-ce", "apgd-t", "fab-t", "square"),
           "l2": ("apgd-ce-l2", "apgd-t-l2", "fab-t-l2", "square-l2")}
# the published settings of the standard version where a member's own default differs
MEMBER_DEFAULTS: dict[str, dict[str, Any]] = {"square": {"max_queries": 5000},
                                              "square-l2": {"max_queries": 5000}}


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
    it in its own Oracle); its query counts go to ``info``.

    Args:
        eps: radius; default 0.3 (linf) or 2.0 (l2).
        norm: "linf" or "l2".
        members: registry names, in order; default :data:`MEMBERS` for the norm.
        member_kwargs: keyword arguments per member name, over :data:`MEMBER_DEFAULTS`.
        seed: passed to every member.

    Returns (in ``AttackResult.info``): ``members`` (names run), ``robust_after`` (name ->
    number of examples still robust after it), ``skipped``, ``queries`` (per black-box member).

    References: Croce & Hein, ICML 2020, arXiv:2003.01690.
    """

    def __init__(self, eps: float | None = None, *, norm: str = "linf",
                 members: tuple[str, ...] | list[str] | None = None,
                 member_kwargs: dict[str, dict[str, Any]] | None = None, seed: int = 0) -> None:
        if norm not in NORMS:
            raise ThreatModelError(f"AutoAttack supports norms {', '.join(NORMS)}, got {norm!r}")
        self.eps = DEFAULT_EPS[norm] if eps is None else eps
        if isinstance(self.eps, (int, float)) and self.eps < 0:
            raise ThreatModelError(f"eps must be non-negative, got {self.eps}")
        self.norm, self.seed = norm, seed
        self.members = tuple(MEMBERS[norm] if members is None else members)
        given = member_kwargs or {}
        self.member_kwargs = {name: {**MEMBER_DEFAULTS.get(name, {}), **given.get(name, {})}
                              for name in {*MEMBER_DEFAULTS, *given}}

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
        with torch.no_grad():
            logits = model(x)
        best, best_m = x.clone(), margin(logits, y)
        robust = ~is_success(logits, y, None)
        info: dict[str, Any] = {"members": names, "skipped": skipped, "robust_after": {},
                                "queries": {}}
        for name in names:
            todo = robust.nonzero().squeeze(1)
            if len(todo) == 0:
                break
            member = get(name, eps=self.eps, seed=self.seed, **self.member_kwargs.get(name, {}))
            res = member(model, x[todo], y[todo], eps=eps[todo])
            m = margin(res.logits, y[todo])
            take = res.success | (m < best_m[todo])
            best[todo[take]] = res.x_adv[take]
            best_m[todo] = torch.where(take, m, best_m[todo])
            robust[todo[res.success]] = False
            info["robust_after"][name] = int(robust.sum())
            if res.queries is not None:
                q = torch.zeros(len(x), dtype=torch.int64, device=x.device)
                q[todo] = res.queries
                info["queries"][name] = q
            log.info("autoattack %s: %d of %d still robust", name, int(robust.sum()), len(x))
        return Crafted(best, info=info)
