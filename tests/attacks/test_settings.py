"""Declarative attack settings (advlab.attacks.settings): one frozen record per attack,
validated once, from which the attack's signature, attributes and repr come."""
from __future__ import annotations

import dataclasses
import inspect
from typing import ClassVar

import pytest
import torch

from advlab import attacks
from advlab.attacks import FGSM, MIFGSM, PGD, GradientAttack
from advlab.attacks.base import Attack
from advlab.attacks.gradient import AUTOGRAD, GradientSettings
from advlab.attacks.settings import Settings, at_least
from advlab.errors import AttackError, ParameterError, ThreatModelError, UnknownNameError


def test_the_family_signature_is_written_once() -> None:
    fields = [f.name for f in dataclasses.fields(GradientSettings)]
    assert fields == ["eps", "norm", "steps", "alpha", "random_start", "restarts", "loss",
                      "early_stop", "seed", "source"]
    pgd = inspect.signature(PGD).parameters
    assert list(pgd) == fields and pgd["steps"].default == 40 and pgd["random_start"].default
    assert pgd["eps"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for k, p in pgd.items() if k != "eps")
    assert list(inspect.signature(FGSM).parameters) == ["eps", "norm", "loss", "seed", "source"]
    assert "decay" in inspect.signature(MIFGSM).parameters
    assert "alpha" not in inspect.signature(MIFGSM).parameters


def test_fixed_settings_are_not_offered_but_hold() -> None:
    fgsm = FGSM(0.1)
    assert (fgsm.steps, fgsm.early_stop, fgsm.restarts) == (1, False, 1)
    with pytest.raises(TypeError):
        FGSM(0.1, steps=3)  # type: ignore[call-arg]
    with pytest.raises(ParameterError, match="no parameter 'steps'"):
        attacks.get("fgsm", steps=3)


def test_validated_once_with_advlab_errors() -> None:
    with pytest.raises(ThreatModelError, match="steps must be >= 1"):
        PGD(steps=0)
    with pytest.raises(ThreatModelError, match="eps must be non-negative"):
        PGD(-0.1)
    with pytest.raises(ThreatModelError, match="alpha must be positive"):
        PGD(alpha=0.0)
    with pytest.raises(ThreatModelError, match="unknown norm 'l3'"):
        PGD(norm="l3")
    with pytest.raises(UnknownNameError):
        PGD(loss="hinge")
    class CEOnly(GradientSettings):
        losses: ClassVar[tuple[str, ...]] = ("ce",)

    with pytest.raises(ThreatModelError, match="unknown loss 'margin'; available: ce"):
        CEOnly(loss="margin")  # a known loss, not one this member supports
    with pytest.raises(ParameterError, match="steps must be an integer"):
        PGD(steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="random_start must be true or false"):
        PGD(random_start=1)  # type: ignore[arg-type]


def test_settings_are_frozen_and_resolved() -> None:
    a = PGD(norm="l2")
    assert a.eps == 2.0 and a.source is AUTOGRAD  # defaults resolved from the norm, autograd
    assert a.settings == GradientSettings(eps=2.0, norm="l2", steps=40, random_start=True)
    with pytest.raises(AttributeError, match="frozen setting"):
        a.steps = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.settings.steps = 3  # type: ignore[misc]
    b = a.replace(steps=3)
    assert (a.steps, b.steps, type(b)) == (40, 3, PGD)
    with pytest.raises(ThreatModelError):
        a.replace(steps=0)


def test_repr_and_registry_defaults() -> None:
    assert repr(attacks.get("pgd-l2", steps=5)) == (
        "PGD(eps=2.0, norm='l2', steps=5, alpha=None, random_start=True, restarts=1, "
        "loss='ce', early_stop=True, seed=0, source=Autograd())")
    assert repr(FGSM()) == "FGSM(eps=0.3, norm='linf', loss='ce', seed=0, source=Autograd())"


def test_a_new_attack_adopts_the_settings() -> None:
    """What the README's guide says: a Settings subclass (or the family's), preset, fixed."""

    class StepSettings(Settings):
        eps: float = 0.1
        steps: int = 3
        seed: int = 0

        def check(self) -> None:
            at_least(0, eps=self.eps)
            at_least(1, steps=self.steps)

    class Nudge(Attack):
        Settings = StepSettings
        norm = "linf"
        preset = {"steps": 2}

        def perturb(self, model, x, y, target, eps, generator):  # type: ignore[no-untyped-def]
            return x + self.steps * eps.view(-1, 1, 1, 1) / 2

    a = Nudge(0.2)
    assert (a.eps, a.steps, repr(a)) == (0.2, 2, "Nudge(eps=0.2, steps=2, seed=0)")
    with pytest.raises(ThreatModelError):
        Nudge(steps=0)
    x = torch.full((2, 1, 2, 2), 0.5)
    out = a(lambda t: torch.stack([t.flatten(1).sum(1), -t.flatten(1).sum(1)], 1), x,
            torch.zeros(2, dtype=torch.long))
    assert torch.allclose(out.x_adv, x + 0.2)

    class Member(GradientAttack):
        preset = {"steps": 7}
        fixed = {"restarts": 1}

    assert "restarts" not in inspect.signature(Member).parameters and Member().steps == 7


def test_a_preset_of_no_setting_is_refused() -> None:
    with pytest.raises(AttackError, match="not settings"):
        class Bad(GradientAttack):  # noqa: F841
            preset = {"stepz": 3}


def test_replace_on_an_attack_without_settings() -> None:
    """An attack that writes its own __init__ (as the run's ladder does) gets the changes as
    attributes of the copy."""

    class Plain(Attack):
        def __init__(self, eps: float = 0.1, seed: int = 0) -> None:
            self.eps, self.seed = eps, seed

    a = Plain(seed=1)
    b = a.replace(seed=3)
    assert (a.seed, b.seed, b.eps, type(b)) == (1, 3, 0.1, Plain)
    assert repr(b) == "Plain(eps=0.1, seed=3)"


def test_every_registered_attack_declares_settings() -> None:
    undeclared = {name for name in attacks.available() if attacks.get(name).Settings is None}
    assert undeclared == set()


def test_the_ensembles_resolve_their_members_from_the_norm() -> None:
    mt = attacks.get("autoattack-mt-l2")
    assert mt.members == ("apgd-ce-l2", "apgd-t-l2") and mt.losses == ("dlr",)
    assert "members" not in inspect.signature(type(mt)).parameters
    aa = attacks.get("autoattack", members=["apgd-ce"])
    assert aa.members == ("apgd-ce",) and aa.member_kwargs["square"] == {"max_queries": 5000}
    with pytest.raises(ThreatModelError, match="odi_steps must be non-negative"):
        attacks.get("autoattack-mt", odi_steps=-1)  # once found only when APGD-T was built


def test_fab_and_square_resolve_their_defaults_from_the_norm() -> None:
    assert (attacks.get("fab-t-l2").eps, attacks.get("fab-l2").eps) == (2.0, None)
    assert attacks.get("square-l2").p_init == 0.1 and attacks.get("square").p_init == 0.8
    with pytest.raises(ThreatModelError, match="p_init must be in"):
        attacks.get("square", p_init=1.5)
    with pytest.raises(ThreatModelError, match="beta"):
        attacks.get("fab", beta=0.0)
