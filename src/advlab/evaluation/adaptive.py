"""Which attack settles a finding on a defended model: the defense's own adaptive attack
(``model.adaptive()``: BPDA / EOT on its surrogate, with its detector) when it has one, else
an attack on the logits that saturation cannot stop (:mod:`advlab.evaluation.sanity` names
them in its findings; the runner runs them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from advlab import attacks


def logit_attack(norm: str) -> tuple[str, dict[str, Any]]:
    """An attack on the logits that saturation cannot stop: APGD-DLR (scale-invariant) when
    registered, else PGD on the C&W margin."""
    name = "apgd-dlr" if norm == "linf" else "apgd-dlr-l2"
    if name in attacks.available():
        return name, {"steps": 100}
    return ("pgd" if norm == "linf" else f"pgd-{norm}"), {"loss": "margin", "steps": 100,
                                                          "restarts": 5}


@dataclass(frozen=True)
class DefenseAttack:
    """The attack to run on a defended model: a registry name and its settings, the
    differentiable surrogate to run it on (None: the model itself), and the detector the
    defense also rejects inputs with (None: none)."""

    name: str
    kwargs: dict[str, Any]
    surrogate: nn.Module | None = None
    detector: Any = None


def defense_attack(model: nn.Module, norm: str, fallback: tuple[str, dict[str, Any]]
                   ) -> DefenseAttack:
    """The defense's own adaptive attack when it has a registered one (``model.adaptive()``:
    BPDA / EOT on its surrogate ``.model``, with its ``.detector``), else ``fallback`` =
    (name, settings) on the model itself.

    References: Athalye, Carlini & Wagner, ICML 2018, arXiv:1802.00420 (BPDA, EOT);
    Tramer et al., "On adaptive attacks to adversarial example defenses", arXiv:2002.08347.
    """
    adaptive = getattr(model, "adaptive", None)
    if callable(adaptive):
        a = adaptive()
        name = a.attack if norm == "linf" or a.attack.endswith(norm) else f"{a.attack}-{norm}"
        if name in attacks.available():
            return DefenseAttack(name, dict(a.attack_kwargs), a.model,
                                 getattr(a, "detector", None))
    return DefenseAttack(fallback[0], dict(fallback[1]))


def adaptive_attack_of(model: nn.Module, norm: str, fallback: tuple[str, dict[str, Any]]
              ) -> tuple[str, dict[str, Any], bool]:
    """(name, settings, whether on the surrogate) of :func:`defense_attack`."""
    a = defense_attack(model, norm, fallback)
    return a.name, a.kwargs, a.surrogate is not None


def pgd_name(norm: str) -> str:
    return "pgd" if norm == "linf" else f"pgd-{norm}"
