"""The adaptive-attack ladder: settle the sanity findings on any model, rung by rung.

A fired sanity finding (:mod:`advlab.evaluation.sanity`) says that the naive figure is not
to be trusted; on a defense advlab did not build nobody has written the adaptive attack.
:func:`settle` climbs a ladder of generic attacks, each stronger in what it assumes less
of the model, and keeps for every example the worst case over all rungs:

1. ``logits``: APGD-CE and APGD-DLR on the logits (the DLR loss is scale-free, so a
   saturated softmax cannot stop it; log-probabilities when the model outputs
   probabilities), with EOT over the model's own randomness when it is randomised.
2. ``bpda``: the same attacks on the model with its shattered layers replaced in the
   backward pass only (:mod:`advlab.evaluation.bpda`, Athalye et al.'s BPDA found
   automatically).
3. ``transfer``: the same attacks on differentiable surrogates (the undefended base model
   when one is named; a network distilled from the model's own labels on training data,
   :func:`distill`), alone and as an ensemble.
4. ``square``: the score-based Square attack at several initial window sizes (``p_init``),
   each a fresh random search with the full query budget, stopping at the first that finds
   nothing new.
5. ``label``: HopSkipJump (Linf), which needs nothing but labels; a point counts when it
   lies within eps.

Every rung attacks only the examples still robust, and its examples are judged on the real
model (by the majority of ``draws`` forward passes for a randomised model). After each rung
the findings are re-checked (:func:`open_findings`); the climb stops once none is left open
(a gradient rung passes the unbounded check: with eps = 1 it fools >= 95%; the white-box
rungs are at least as strong as the black-box and one-step attacks the checks measured) and
the last rung found nothing new. A finding still open at the top of the ladder makes the
figure unreliable; a figure of 0% settles every finding (it cannot overstate robustness).

References:
    Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of security", ICML
    2018, arXiv:1802.00420. Tramer, Carlini, Brendel & Madry, "On adaptive attacks to
    adversarial example defenses", NeurIPS 2020, arXiv:2002.08347. Croce & Hein, ICML 2020,
    arXiv:2003.01690 (APGD, DLR). Andriushchenko et al., ECCV 2020, arXiv:1912.00049
    (Square). Chen, Jordan & Wainwright, IEEE S&P 2020, arXiv:1904.02144 (HopSkipJump).
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advlab.attacks.base import Attack, Checked, Crafted, Model
from advlab.attacks.settings import one_of
from advlab.errors import ThreatModelError
from advlab.evaluation import bpda
from advlab.evaluation.rungs import (  # noqa: F401  (part of the ladder's interface)
    GRADIENT_RUNGS,
    RUNGS,
    UNBOUNDED_EPS,
    UNBOUNDED_RATE,
    Climb,
    Options,
    Rung,
    gradient_attacks,
    label_rung,
    passed_unbounded,
    run_gradient_rung,
    square_rung,
)
from advlab.evaluation.surrogates import (  # noqa: F401  (part of the ladder's interface)
    Attached,
    Ensemble,
    LogProbabilities,
    distill,
    has_gradient,
    judge,
    surrogate_net,
)

log = logging.getLogger(__name__)

@dataclass
class Settlement:
    """What :func:`settle` found.

    Attributes:
        x_adv: the worst case per example (x where no rung fooled it).
        fooled: (N,) bool, judged on the real model.
        rungs: the rungs climbed, in order.
        findings: fired check name -> "settled" or "open".
        naive_fooled: (N,) bool of the starting point (the naive attacks, if given).
    """

    x_adv: Tensor
    fooled: Tensor
    rungs: list[Rung]
    findings: dict[str, str]
    naive_fooled: Tensor | None = None

    @property
    def robust_accuracy(self) -> float:
        """Robust accuracy of the worst case (fraction of the examples not fooled)."""
        return 1.0 - self.fooled.float().mean().item()

    @property
    def settled(self) -> bool:
        """No fired finding left open."""
        return all(v == "settled" for v in self.findings.values())

    @property
    def winner(self) -> str | None:
        """The last rung that fooled new examples (the one that got the figure there)."""
        hits = [r.name for r in self.rungs if r.new > 0]
        return hits[-1] if hits else None

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        return {"robust_accuracy": self.robust_accuracy, "settled": self.settled,
                "winner": self.winner, "findings": dict(self.findings),
                "rungs": [vars(r).copy() for r in self.rungs]}


# ----------------------------------------------------------------------------- findings


def _rate(evidence: Mapping[str, float], key: str) -> float | None:
    v = evidence.get(key)
    return None if v is None else float(v)


def open_findings(findings: Sequence[Mapping[str, Any]], rungs: Sequence[Rung],
                  white_rate: float, tol: float) -> dict[str, str]:
    """Each fired finding's status after the rungs climbed so far: "settled" or "open".

    - softmax, gradients, unbounded: a gradient rung passed the unbounded check (eps = 1
      fools >= 95%: the gradient it followed leads somewhere);
    - randomness: the same, for a rung with EOT;
    - one-step-vs-iterative, blackbox-vs-whitebox: the gradient rungs' success
      (``white_rate``) is within ``tol`` of the weaker attack's rate the check measured
      (``evidence["weak_success"]``) or above it.
    """
    useful = passed_unbounded(rungs)
    out = {}
    for f in findings:
        if not f.get("fired"):
            continue
        name = f["name"]
        weak = _rate(f.get("evidence") or {}, "weak_success")
        if name in ("one-step-vs-iterative", "blackbox-vs-whitebox") and weak is not None:
            ok = white_rate >= weak - tol
        else:
            ok = useful
        out[name] = "settled" if ok else "open"
    return out


def _as_dict(f: Any) -> dict[str, Any]:
    if isinstance(f, Mapping):
        return dict(f)
    return f.to_dict() if hasattr(f, "to_dict") else dict(vars(f))


# ----------------------------------------------------------------------------- the climb


def settle(model: nn.Module, x: Tensor, y: Tensor, eps: float,
           findings: Sequence[Any], *, base: nn.Module | None = None,
           train: Tensor | None = None, surrogates: Sequence[nn.Module] = (),
           naive: Tensor | None = None, options: Options | None = None,
           seed: int = 0, cache: dict[str, nn.Module] | None = None) -> Settlement:
    """Climb the ladder on ``model`` until the fired ``findings`` are settled.

    Args:
        model: any nn.Module, x in [0, 1] -> logits (or probabilities), eval mode; not
            modified.
        x, y: the evaluation images (N x C x H x W) and int64 labels.
        eps: the Linf radius.
        findings: the sanity findings (:class:`~advlab.evaluation.sanity.Finding` or their
            dicts); the fired ones are settled, "randomness" switches EOT on, "softmax"
            attacks the log-probabilities.
        base: the undefended model the defense wraps, if any (a transfer surrogate).
        train: training images to distill a surrogate from (None: no distilled surrogate).
        surrogates: further differentiable surrogates (e.g. distilled already).
        naive: (N,) x_adv of the naive attacks, or None: the climb starts from their worst
            case (they count for the gradient-rung comparison too).
        options: the ladder's settings.
        seed: seeds every attack and the distillation.
        cache: where the distilled surrogate is kept ("distilled") and found again, so that
            several calls on the same model distill once, and only if a climb reaches the
            transfer rung.

    Returns:
        A :class:`Settlement`: the per-example worst case, the rungs and each finding's
        status.
    """
    opts = options or Options()
    unknown = set(opts.rungs) - set(RUNGS)
    if unknown:
        raise ThreatModelError(f"unknown ladder rungs {sorted(unknown)}; use {RUNGS}")
    fs = [_as_dict(f) for f in findings]
    fired = {f["name"] for f in fs if f.get("fired")}
    randomized = "randomness" in fired
    net: nn.Module = LogProbabilities(model) if "softmax" in fired else model
    draws = opts.draws if randomized else 1
    x, y = x.detach(), y.detach()
    with torch.no_grad():
        classes = net(x[:2]).shape[1]
    state = Climb(net, x, y, eps, draws, x.clone(),
                   torch.zeros(len(x), dtype=torch.bool, device=x.device))
    naive_fooled = None
    if naive is not None:
        naive_fooled = judge(net, naive, y, draws)
        state.take(naive, torch.arange(len(x), device=x.device))
    state.white = state.fooled.clone()
    status = open_findings(fs, [], state.white.float().mean().item(), opts.tol)
    for name in opts.rungs:
        if len(state.robust) == 0 or _done(status, state.rungs, opts):
            break
        _climb(name, state, net, base, train, surrogates, opts, randomized, classes, seed,
               {} if cache is None else cache)
        status = open_findings(fs, state.rungs, state.white.float().mean().item(), opts.tol)
        log.info("ladder rung %s: robust accuracy %.3f; findings %s", name,
                 state.rungs[-1].robust_accuracy if state.rungs else float("nan"), status)
    if len(state.robust) == 0:  # 0% cannot overstate robustness: nothing left to settle
        status = dict.fromkeys(status, "settled")
    return Settlement(state.x_adv, state.fooled, state.rungs, status, naive_fooled)


def _done(status: dict[str, str], rungs: list[Rung], opts: Options) -> bool:
    """Stop when every fired finding is settled and the last rung found nothing new (a rung
    that still finds examples may not be the last one that would); nothing to settle, no
    climb."""
    if opts.exhaustive:
        return False
    settled = all(v == "settled" for v in status.values())
    return settled and (not rungs or rungs[-1].new == 0)


def _climb(name: str, state: Climb, net: nn.Module, base: nn.Module | None,
           train: Tensor | None, surrogates: Sequence[nn.Module], opts: Options,
           randomized: bool, classes: int, seed: int, cache: dict[str, nn.Module]) -> None:
    if name == "logits":
        run_gradient_rung(state, name, "APGD-CE, APGD-DLR" + (" with EOT" if randomized else ""),
                      [net], opts, randomized, classes, seed)
    elif name == "bpda":
        copy_, layers = bpda.surrogate(net, state.x[state.robust][:200])
        if not layers:
            state.rungs.append(Rung(name, "no shattered layer found", 0, 0,
                                    1 - state.fooled.float().mean().item(), 0.0))
            return
        what = ", ".join(f"{s.name} ({s.replacement})" for s in layers)
        run_gradient_rung(state, name, f"BPDA through {what}", [copy_], opts, randomized,
                      classes, seed)
    elif name == "transfer":
        t0 = time.perf_counter()
        subs = [*([base] if base is not None else []), *surrogates]
        if train is not None and opts.distill_epochs > 0:
            if "distilled" not in cache:
                cache["distilled"] = distill(net, train, eps=state.eps,
                                             epochs=opts.distill_epochs, seed=seed)
            subs.append(cache["distilled"])
        fit = time.perf_counter() - t0
        if not subs:
            state.rungs.append(Rung(name, "no surrogate (no base model, no training data)",
                                    0, 0, 1 - state.fooled.float().mean().item(), 0.0))
            return
        targets = [Ensemble(subs).eval(), *subs] if len(subs) > 1 else subs
        run_gradient_rung(state, name, f"APGD on {len(subs)} surrogate(s)"
                      + (" and their ensemble" if len(subs) > 1 else ""), targets, opts,
                      False, classes, seed)
        state.rungs[-1].seconds += fit  # the distillation is the rung's cost too
    elif name == "square" and opts.square_queries > 0:
        square_rung(state, opts, seed)
    elif name == "label" and opts.label_queries > 0:
        label_rung(state, opts, seed)


# ----------------------------------------------------------------------------- as an attack


#: the [sanity] keys that set the ladder's budget -> the :class:`~.ladder.Ladder` setting
LADDER_KEYS = {"ladder_steps": "steps", "ladder_square_queries": "square_queries",
               "ladder_label_queries": "label_queries",
               "ladder_distill_epochs": "distill_epochs", "ladder_rungs": "rungs"}


def ladder_settings(table: Mapping[str, Any]) -> dict[str, Any]:
    """The ladder's settings from a run's [sanity] table (keys of :data:`LADDER_KEYS`)."""
    return {v: table[k] for k, v in LADDER_KEYS.items() if k in table}


NAME = "ladder"  # the attack name a sanity finding gives the ladder


class Ladder(Attack):
    """:func:`settle` as an attack, so that a run stores, resumes and reports it like any
    other cell (the attack a sanity finding names on a model advlab did not build). Not in
    the attack registry: it lives above the attacks, and takes a scalar eps only.

    Args:
        eps: Linf radius.
        findings: the sanity findings to settle (dicts: name, fired, evidence).
        steps, square_queries, label_queries, distill_epochs, draws, rungs: see
            :class:`Options` (``rungs=()``: no climb, every finding stays open).
        seed: seeds every rung.

    The base model and training images come from :meth:`with_data` (a run's runner knows
    them; the JSON-able settings above do not hold tensors). ``AttackResult.info["ladder"]``
    carries :meth:`Settlement.summary`.
    """

    def __init__(self, eps: float = 0.3, *, findings: Sequence[Mapping[str, Any]] = (),
                 norm: str = "linf", steps: int = 100, square_queries: int = 1000,
                 label_queries: int = 1000,
                 distill_epochs: int = 4, draws: int = 5, rungs: Sequence[str] = RUNGS,
                 seed: int = 0) -> None:
        if norm != "linf":
            raise ThreatModelError(f"the ladder attacks the linf ball, got norm {norm!r}")
        for rung in rungs:
            one_of("ladder rung", rung, RUNGS)
        self.norm, self.eps, self.seed = norm, eps, seed
        self.findings = [dict(f) for f in findings]
        self.options = Options(steps=steps, square_queries=square_queries,
                               label_queries=label_queries, distill_epochs=distill_epochs,
                               draws=draws, rungs=tuple(rungs))
        self._base: nn.Module | None = None
        self._train: Tensor | None = None
        self._distilled: dict[int, dict[str, nn.Module]] = {}

    def with_data(self, base: nn.Module | None, train: Tensor | None) -> Ladder:
        """A copy that uses ``base`` as a transfer surrogate and distills one from ``train``."""
        out = copy.copy(self)
        out._base, out._train, out._distilled = base, train, {}
        return out

    def perturb(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
                eps: Tensor | None, generator: torch.Generator) -> Crafted:
        if target is not None:
            raise ThreatModelError("the ladder is untargeted")
        if eps is None or not bool((eps == eps[0]).all()):
            raise ThreatModelError("the ladder needs one eps for the whole batch")
        radius = float(eps[0].item())
        net = _unchecked(model)
        # batches of a cell share the distilled surrogate: distilled once per model, lazily
        cache = self._distilled.setdefault(id(net), {})
        s = settle(net, x, y, radius, self.findings, base=self._base, train=self._train,
                   options=self.options, seed=self.seed, cache=cache)
        return Crafted(s.x_adv, info={"ladder": s.summary()})


def _unchecked(model: Model) -> Any:
    """The model behind the attack's first-call check wrapper."""
    return model.model if isinstance(model, Checked) else model
