"""The individual sanity checks of an evaluation, each returning a :class:`Finding`.

Each check is small and single-purpose: whether the symptom is present, a message, the numbers
behind it, and the adaptive attack that settles the question (a registry name and its
settings, to run on the model, or on ``model.adaptive().model`` when ``on_surrogate``).
:mod:`advlab.evaluation.sanity` runs them together (:func:`~advlab.evaluation.sanity.run_all`)
and names the adaptive-attack ladder for a model advlab did not build.

References:
    Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of security", ICML
    2018, arXiv:1802.00420 (Section 3.1, the checklist). Zimmermann, Brendel, Tramer &
    Carlini, NeurIPS 2022, arXiv:2206.13991 (the binarization test). Carlini et al., "On
    evaluating adversarial robustness", arXiv:1902.06705. Croce & Hein, auto-attack's
    ``checks.py`` (arXiv:2003.01690).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advlab import attacks
from advlab.evaluation.adaptive import adaptive_attack_of, logit_attack, pgd_name
from advlab.evaluation.binarization import AttackFn, binarization_test


@dataclass
class Finding:
    """The outcome of one sanity check.

    Attributes:
        name: the check ("softmax", "randomness", "gradients", "one-step-vs-iterative",
            "blackbox-vs-whitebox", "unbounded", "binarization").
        fired: True when the symptom is present (the evaluation is suspect).
        message: one sentence for the report.
        evidence: the numbers behind the verdict.
        attack: the registry name of the attack that settles the question, or "ladder"
            (:class:`advlab.evaluation.ladder.Ladder`, for a model without its own adaptive
            attack); None when the check did not fire or none applies.
        attack_kwargs: its settings (eps is the evaluation's).
        on_surrogate: run ``attack`` on ``model.adaptive().model`` (BPDA / EOT surface of an
            advlab defense) instead of the model itself.
        skipped: the check could not run (e.g. no black-box attack registered).
    """

    name: str
    fired: bool
    message: str
    evidence: dict[str, float] = field(default_factory=dict)
    attack: str | None = None
    attack_kwargs: dict[str, Any] = field(default_factory=dict)
    on_surrogate: bool = False
    skipped: bool = False

    @property
    def level(self) -> str:
        """"warning" when fired, "skipped", else "ok"."""
        return "warning" if self.fired else "skipped" if self.skipped else "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields plus ``check`` (= name) and ``level``."""
        return {**asdict(self), "check": self.name, "level": self.level}


# ----------------------------------------------------------------------------- helpers


def _logits(model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _success(atk: attacks.Attack, model: nn.Module, x: Tensor, y: Tensor,
             eps: float | None = None) -> float:
    return atk(model, x, y, eps=eps).success.float().mean().item()


def _tolerance(n: int, tol: float) -> float:
    """Rates must differ by more than ``tol`` and by more than 2 examples out of n."""
    return max(tol, 2.0 / n)


def _weaker_wins(check: str, model: nn.Module, norm: str, weak: tuple[str, str, float],
                 strong: tuple[str, str, float], margin: float, why: str) -> Finding:
    """The finding of an attack comparison: fires when the attack that should be weaker,
    ``weak = (kind, name, success rate)``, beats the one that should be stronger by more than
    ``margin``; names the defense's adaptive attack (or one on the logits) when it fires."""
    (wk, wn, wr), (sk, sn, sr) = weak, strong
    fired = wr > sr + margin
    msg = (f"the {wk} {wn} fools {wr:.1%}, more than the {sk} {sn} ({sr:.1%}): {why}"
           if fired else f"the {sk} {sn} ({sr:.1%}) is at least as strong as the {wk} {wn} "
           f"({wr:.1%})")
    name, kw, sur = adaptive_attack_of(model, norm, logit_attack(norm))
    return Finding(check, fired, msg, {f"success_{wn}": wr, f"success_{sn}": sr,
                                       "weak_success": wr, "strong_success": sr},
                   name if fired else None, kw if fired else {}, sur and fired)


# ----------------------------------------------------------------------------- the checks


def check_softmax(model: nn.Module, x: Tensor) -> Finding:
    """Fires when every output row lies in [0, 1] and sums to 1: probabilities, not logits.

    Attacks on the cross-entropy of probabilities see a saturated, masked loss; attack the
    logits (remove the softmax) or use a scale-invariant loss (DLR).
    """
    out = _logits(model, x)
    in_unit = bool(((out >= 0) & (out <= 1)).all())
    sums = out.sum(1)
    to_one = bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-4))
    fired = in_unit and to_one
    name, kw = logit_attack("linf")
    msg = ("the model outputs probabilities (rows in [0, 1] summing to 1), not logits: a "
           "cross-entropy on them saturates; remove the final softmax or use the DLR loss"
           if fired else "the model outputs logits")
    return Finding("softmax", fired, msg,
                   {"min": out.min().item(), "max": out.max().item(),
                    "max_row_sum_error": (sums - 1).abs().max().item()},
                   name if fired else None, kw if fired else {})


def check_randomness(model: nn.Module, x: Tensor, *, repeats: int = 2,
                     atol: float = 1e-5) -> Finding:
    """Fires when the same input gives different logits: a randomised model, whose single
    gradients are noisy; attack it with EOT (Athalye et al. 2018)."""
    outs = [_logits(model, x) for _ in range(max(2, repeats))]
    diff = max((o - outs[0]).abs().max().item() for o in outs[1:])
    scale = outs[0].abs().max().item() + 1e-12
    changed = max((o.argmax(1) != outs[0].argmax(1)).float().mean().item() for o in outs[1:])
    fired = diff > atol * max(1.0, scale)
    name, kw, sur = adaptive_attack_of(model, "linf", ("eot-pgd", {"samples": 20, "transform": [],
                                                          "steps": 100}))
    msg = (f"the same input gives different logits (max difference {diff:.3g}; "
           f"{changed:.1%} of predictions change): evaluate with EOT over the randomness"
           if fired else "the model is deterministic")
    return Finding("randomness", fired, msg,
                   {"max_logit_difference": diff, "prediction_changes": changed},
                   name if fired else None, kw if fired else {}, sur and fired)


def check_gradients(model: nn.Module, x: Tensor, y: Tensor, *, norm: str = "linf",
                    vanishing: float = 0.1, zero: float = 1e-30) -> Finding:
    """Fires when input gradients of the cross-entropy are NaN/Inf for any example, or
    vanish (every entry below ``zero`` in absolute value) for more than a fraction
    ``vanishing`` of the correctly classified examples (a saturated softmax, a
    non-differentiable preprocessing, a quantisation).
    """
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    loss = nn.functional.cross_entropy(logits, y, reduction="sum")
    grad = None
    if loss.requires_grad:  # else no graph at all: as masked as it gets
        (grad,) = torch.autograd.grad(loss, xg, allow_unused=True)
    if grad is None:  # no graph to x (parameters alone)
        grad = torch.zeros_like(x)
    flat = grad.detach().flatten(1)
    bad = (~torch.isfinite(flat)).any(1)
    right = logits.detach().argmax(1) == y
    tiny = flat.abs().amax(1) < zero
    frac_bad = bad.float().mean().item()
    frac_zero = (tiny & right).float().sum().item() / max(1, int(right.sum()))
    fired = frac_bad > 0 or frac_zero > vanishing
    norms = flat.abs().sum(1)[torch.isfinite(flat).all(1)]
    name, kw, sur = adaptive_attack_of(model, norm, logit_attack(norm))
    if frac_bad > 0:
        msg = f"{frac_bad:.1%} of the examples have NaN or Inf input gradients"
    elif fired:
        msg = (f"the input gradient vanishes (is zero) for {frac_zero:.1%} of the correctly "
               "classified examples: gradient attacks cannot move; attack the logits (margin, "
               "DLR) or through a BPDA surrogate")
    else:
        msg = "input gradients are finite and non-zero"
    return Finding("gradients", fired, msg,
                   {"nan_or_inf": frac_bad, "vanishing": frac_zero,
                    "median_l1": norms.median().item() if len(norms) else float("nan")},
                   name if fired else None, kw if fired else {}, sur and fired)


def check_one_step_vs_iterative(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 0.3,
                                norm: str = "linf", steps: int = 20, tol: float = 0.02,
                                results: Mapping[str, float] | None = None,
                                seed: int = 0) -> Finding:
    """Fires when a one-step attack (FGSM) fools more examples than an iterative one (PGD),
    which should never happen unless the iterative attack is lost in a masked landscape.

    Args:
        results: already measured success rates by registry name; a one-shot and an
            iterative white-box entry (by the registry's taxonomy) are used when present.
    """
    one, it = _rates_by_kind(results, norm)
    if one is None:
        one = ("fgsm", _success(attacks.get("fgsm", eps=eps, norm=norm, seed=seed), model, x, y))
    if it is None:
        atk = attacks.get(pgd_name(norm), eps=eps, steps=steps, seed=seed)
        it = (pgd_name(norm), _success(atk, model, x, y))
    return _weaker_wins("one-step-vs-iterative", model, norm, ("one-step", *one),
                        ("iterative", *it), _tolerance(len(x), tol),
                        "the iterative attack is misled (gradient masking)")


def _rates_by_kind(results: Mapping[str, float] | None, norm: str
                   ) -> tuple[tuple[str, float] | None, tuple[str, float] | None]:
    if not results:
        return None, None
    tax = attacks.available()
    white = {k: v for k, v in results.items()
             if k in tax and tax[k].knowledge == "white" and tax[k].norm == norm}
    one = [(k, v) for k, v in white.items() if tax[k].kind == "one-shot"]
    it = [(k, v) for k, v in white.items() if tax[k].kind == "iterative"]
    return (max(one, key=lambda kv: kv[1]) if one else None,
            max(it, key=lambda kv: kv[1]) if it else None)


def check_blackbox_vs_whitebox(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 0.3,
                               norm: str = "linf", steps: int = 20, queries: int = 1000,
                               tol: float = 0.02, results: Mapping[str, float] | None = None,
                               reference_steps: int = 100, seed: int = 0) -> Finding:
    """Fires when a score-based black-box attack (Square) beats the best white-box attack:
    gradients that mislead the white-box attack while the decision surface is not robust.

    A fixed-step PGD can fall behind Square on an adversarially trained model without any
    masking (it did on an early checkpoint of the zoo's TRADES recipe; the current
    mnist-cnn-trades: ``python benchmarks/defenses_repro.py --n 100 sanity``, figures in
    benchmarks/results/defenses_repro-sanity-mnist-cnn-trades.json), so before firing the
    check runs the strong white-box reference, APGD-CE and APGD-DLR (their per-example
    union), and compares with the best white-box figure.

    Args:
        steps: PGD steps when no white-box rate is given.
        results: already measured success rates by registry name (used when they contain a
            black-box and a white-box entry of this norm).
        reference_steps: iterations of APGD-CE and APGD-DLR, run only when the black-box
            rate beats the other white-box ones.
    """
    tax = attacks.available()
    square = "square" if norm == "linf" else f"square-{norm}"
    given = {k: v for k, v in (results or {}).items() if k in tax and tax[k].norm == norm}
    black = {k: v for k, v in given.items() if tax[k].knowledge in ("score", "label")}
    white = {k: v for k, v in given.items() if tax[k].knowledge == "white"}
    if not black:
        if square not in tax:
            return Finding("blackbox-vs-whitebox", False,
                           f"skipped: no black-box attack ({square}) is registered",
                           skipped=True)
        atk = attacks.get(square, eps=eps, max_queries=queries, seed=seed)
        black = {square: _success(atk, model, x, y)}
    if not white:
        atk = attacks.get(pgd_name(norm), eps=eps, steps=steps, seed=seed)
        white = {pgd_name(norm): _success(atk, model, x, y)}
    b = max(black.items(), key=lambda kv: kv[1])
    margin = _tolerance(len(x), tol)
    if b[1] > max(white.values()) + margin:
        white.update([_strong_whitebox(model, x, y, eps, norm, reference_steps, seed)])
    w = max(white.items(), key=lambda kv: kv[1])
    return _weaker_wins("blackbox-vs-whitebox", model, norm, ("black-box", *b),
                        ("best white-box", *w), margin, "the gradients are masked")


def _strong_whitebox(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str,
                     steps: int, seed: int) -> tuple[str, float]:
    """(label, success) of the per-example union of APGD-CE and APGD-DLR (AutoAttack's
    white-box part, Croce & Hein 2020, arXiv:2003.01690); PGD on the margin when they are
    not registered."""
    suffix = "" if norm == "linf" else f"-{norm}"
    names = [n for n in (f"apgd-ce{suffix}", f"apgd-dlr{suffix}") if n in attacks.available()]
    if not names:
        atk = attacks.get(pgd_name(norm), eps=eps, steps=steps, loss="margin", seed=seed)
        return pgd_name(norm), _success(atk, model, x, y)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for n in names:
        fooled |= attacks.get(n, eps=eps, steps=steps, seed=seed)(model, x, y).success
    return "+".join(names), fooled.float().mean().item()


def check_binarization(model: nn.Module, x: Tensor, y: Tensor, attack: AttackFn, *,
                       eps: float = 0.3, max_examples: int = 20, pass_rate: float = 0.95,
                       seed: int = 0) -> Finding:
    """Fires when ``attack`` misses adversarial examples known to exist: Zimmermann et al.'s
    binarization test (:mod:`advlab.evaluation.binarization`) on the first ``max_examples``
    examples passes on fewer than ``pass_rate`` of those it could build a test for, and
    fails on more than 2 of them (as the rate comparisons: a single hard test is no masking;
    on a TRADES mnist-cnn at eps 0.3, PGD-40, PGD-100 and APGD-CE-100 all fail the same
    single test: ``python benchmarks/defenses_repro.py --n 40 binarization``, figures in
    benchmarks/results/defenses_repro-binarization-mnist-cnn-trades.json).

    Args:
        attack: ``attack(binary_model, x_i, zeros, eps) -> x_adv``, the evaluation's attack.
    """
    r = binarization_test(model, x[:max_examples], y[:max_examples], attack, eps, seed=seed)
    fired = r.tested > 0 and 1 - r.pass_rate > _tolerance(r.tested, 1 - pass_rate)
    if r.tested == 0:
        msg = "skipped: no example admitted a binarization test (features not separable)"
    elif fired:
        msg = (f"the attack found the adversarial example known to exist in only "
               f"{r.pass_rate:.1%} of {r.tested} binarization tests: it is too weak for this "
               "model, whatever robust accuracy it reports")
    else:
        msg = f"the attack passed {r.pass_rate:.1%} of {r.tested} binarization tests"
    name, kw = logit_attack("linf")
    return Finding("binarization", fired, msg,
                   {"pass_rate": r.pass_rate, "tested": float(r.tested),
                    "skipped": float(r.skipped)},
                   name if fired else None, kw if fired else {}, skipped=r.tested == 0)


def check_unbounded(model: nn.Module, x: Tensor, y: Tensor, *, norm: str = "linf",
                    eps_grid: Sequence[float] | None = None, steps: int = 20,
                    target_rate: float = 0.95, seed: int = 0) -> Finding:
    """Fires when PGD's success does not approach 100% as eps grows: with eps = 1.0 (Linf),
    the attacker may put any image in the box, so only a broken attack fails.

    PGD here starts at x (no random start: a random start inside a huge ball is itself
    noise that fools any model, hiding a useless gradient) and takes ``steps`` steps.

    Args:
        eps_grid: the radii tried (default 0.5, 1.0 for Linf; 5, 10 for L2).
        target_rate: the success required at the largest eps.
    """
    grid = list(eps_grid or ({"linf": (0.5, 1.0), "l2": (5.0, 10.0)}.get(norm, (20.0, 100.0))))
    atk = attacks.get(pgd_name(norm), eps=grid[-1], steps=steps, random_start=False,
                      seed=seed)
    rates = {f"success_eps_{e:g}": _success(atk, model, x, y, eps=e) for e in grid}
    top = rates[f"success_eps_{grid[-1]:g}"]
    fired = top < target_rate
    name, kw, sur = adaptive_attack_of(model, norm, logit_attack(norm))
    msg = (f"PGD fools only {top:.1%} at eps={grid[-1]:g}, where any image is reachable: the "
           "gradients mislead the attack (or the evaluation is broken)" if fired else
           f"PGD fools {top:.1%} at eps={grid[-1]:g}")
    return Finding("unbounded", fired, msg, rates, name if fired else None,
                   kw if fired else {}, sur and fired)
