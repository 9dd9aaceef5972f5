"""Sanity checks of an evaluation: symptoms of gradient masking and evaluation mistakes.

A robustness number is only as good as the attack behind it. Each check
(:mod:`advlab.evaluation.checks`, re-exported here) is small and single-purpose, and returns
a :class:`Finding`: whether it fired, a message, the numbers behind it, and the adaptive
attack that settles the question (a registry name and its settings, to run on the model, or
on ``model.adaptive().model`` when ``on_surrogate``).

- :func:`check_softmax`: the model outputs probabilities, not logits (the cross-entropy of
  a softmax output saturates).
- :func:`check_randomness`: the same input gives different logits (a randomised model
  needs EOT).
- :func:`check_gradients`: input gradients that vanish (are exactly zero) or are NaN/Inf.
- :func:`check_one_step_vs_iterative`: a one-step attack (FGSM) beating an iterative one
  (PGD): the iterative attack is lost in a masked landscape.
- :func:`check_blackbox_vs_whitebox`: a score-based black-box attack (Square) beating the
  white-box one: the gradients mislead.
- :func:`check_unbounded`: success not approaching 100% as eps grows to 1.0 (an attack
  that may change every pixel arbitrarily must win).
- :func:`check_binarization`: the attack misses adversarial examples known to exist
  (Zimmermann et al.'s binarization test, :mod:`advlab.evaluation.binarization`); in
  :func:`run_all` it tests the checks' PGD on the first ``binarization_examples``
  examples (deterministic Linf models only).

A finding on a model without its own adaptive attack (no ``.adaptive()``: a defense advlab
did not build) names the adaptive-attack ladder (:mod:`advlab.evaluation.ladder`): no single
attack settles it, :func:`advlab.evaluation.ladder.settle` climbs until the checks are
credible.

:func:`run_all` runs them all (on at most ``max_examples`` examples), reusing success rates
the caller already measured.

References:
    Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of security", ICML
    2018, arXiv:1802.00420 (Section 3.1, the checklist). Zimmermann, Brendel, Tramer &
    Carlini, NeurIPS 2022, arXiv:2206.13991 (the binarization test). Carlini et al., "On evaluating
    adversarial robustness", arXiv:1902.06705. Croce & Hein, auto-attack's ``checks.py``
    (arXiv:2003.01690).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from advlab import attacks
from advlab.errors import InputError
from advlab.evaluation.adaptive import (  # noqa: F401  (part of sanity's API)
    DefenseAttack,
    adaptive_attack_of,
    defense_attack,
    logit_attack,
    pgd_name,
)
from advlab.evaluation.binarization import AttackFn
from advlab.evaluation.checks import (  # noqa: F401  (the checks: part of sanity's API)
    Finding,
    check_binarization,
    check_blackbox_vs_whitebox,
    check_gradients,
    check_one_step_vs_iterative,
    check_randomness,
    check_softmax,
    check_unbounded,
)
from advlab.evaluation.ladder import NAME as LADDER
from advlab.evaluation.ladder import Attached, has_gradient
from advlab.validation import check_images, check_labels

log = logging.getLogger(__name__)


def name_ladder(findings: Sequence[Finding], settings: Mapping[str, Any] | None = None
                ) -> None:
    """Make every fired finding name the adaptive-attack ladder
    (:mod:`advlab.evaluation.ladder`), with the fired findings (and ``settings``, its
    budget) as its settings: on a model without its own adaptive attack (no
    ``.adaptive()``), no single attack settles them."""
    fired = [f for f in findings if f.fired]
    spec = {"findings": [{"name": f.name, "fired": True, "evidence": dict(f.evidence)}
                         for f in fired], "norm": "linf", **(settings or {})}
    for f in fired:
        f.attack, f.attack_kwargs, f.on_surrogate = LADDER, spec, False


#: PGD steps of the attack the binarization check of :func:`run_all` tests
BINARIZATION_STEPS = 40


def pgd_on_readout(steps: int = BINARIZATION_STEPS, seed: int = 0) -> AttackFn:
    """The attack :func:`run_all`'s binarization check tests: PGD on the binary readout,
    which sees the exactly zero gradient of a readout without a graph to its input (an
    argmax, a lookup) instead of failing."""
    def attack(head: nn.Module, xi: Tensor, z: Tensor, e: float) -> Tensor:
        net = head if has_gradient(head, xi) else Attached(head)
        return attacks.get("pgd", eps=e, steps=steps, seed=seed)(net, xi, z).x_adv
    return attack


def _binarization(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str,
                  randomized: bool, n: int, seed: int) -> Finding:
    why = ("the test is Linf" if norm != "linf" else "the model is randomised" if randomized
           else "binarization_examples is 0" if n <= 0 else None)
    if why is not None:
        return Finding("binarization", False, f"skipped: {why}", skipped=True)
    return check_binarization(model, x, y, pgd_on_readout(seed=seed), eps=eps,
                              max_examples=n, seed=seed)


def run_all(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 0.3, norm: str = "linf",
            results: Mapping[str, float] | None = None, max_examples: int = 200,
            blackbox_queries: int = 1000, seed: int = 0,
            ladder: Mapping[str, Any] | None = None,
            binarization_examples: int = 20) -> list[Finding]:
    """Every sanity check on (at most ``max_examples`` of) x, y.

    Args:
        model: the evaluated model or defense (eval mode), x in [0, 1] -> logits.
        x, y: evaluation images and int64 labels.
        eps, norm: the evaluated threat model.
        results: success rates already measured at this eps, by attack registry name (reused
            by the attack-comparison checks instead of re-running attacks).
        max_examples: examples used (the first ones).
        blackbox_queries: query budget of Square when it has to be run.
        seed: seeds the attacks.
        ladder: the ladder's budget (:class:`~advlab.evaluation.ladder.Ladder` settings:
            steps, square_queries, label_queries, distill_epochs) for the findings of a
            model without its own adaptive attack.
        binarization_examples: examples of the binarization test (0: skip it); it tests
            PGD (:data:`BINARIZATION_STEPS` steps), the checks' own iterative attack.

    Returns:
        The findings, in a fixed order; ``[f for f in findings if f.fired]`` are the warnings.
    """
    check_images(x)
    if not isinstance(y, Tensor):
        raise InputError(f"y must be a torch.Tensor, got {type(y).__name__}")
    check_labels(y, len(x))
    x, y = x[:max_examples], y[:max_examples]
    own = callable(getattr(model, "adaptive", None))
    if not has_gradient(model, x[:2]):  # e.g. an argmax head: attacks see a zero gradient
        model = Attached(model)
    soft = check_softmax(model, x)
    out = [soft, check_randomness(model, x), check_gradients(model, x, y, norm=norm)]
    if soft.fired:  # attacks refuse probability outputs: the attack checks cannot run
        out += [Finding(name, False, "skipped: the model outputs probabilities, attacks need "
                        "logits", skipped=True)
                for name in ("one-step-vs-iterative", "blackbox-vs-whitebox", "unbounded")]
    else:
        out += [check_one_step_vs_iterative(model, x, y, eps=eps, norm=norm, results=results,
                                            seed=seed),
                check_blackbox_vs_whitebox(model, x, y, eps=eps, norm=norm, results=results,
                                           queries=blackbox_queries, seed=seed),
                check_unbounded(model, x, y, norm=norm, seed=seed)]
    out.append(_binarization(model, x, y, eps, norm, out[1].fired, binarization_examples,
                             seed))
    if norm == "linf" and not own:
        name_ladder(out, ladder)
    for f in out:
        if f.fired:
            log.warning("sanity check %s: %s (adaptive attack: %s %s)", f.name, f.message,
                        f.attack, f.attack_kwargs)
    return out
