"""advlab.evaluation.adaptive: which attack settles a finding on a defended model (its own
adaptive attack in the run's norm, or the fallback), and the logit attack."""
from __future__ import annotations

from types import SimpleNamespace

from torch import nn

from advlab import attacks, defenses
from advlab.evaluation import adaptive


class Defended(nn.Module):
    """A defense whose adaptive attack is ``attack`` on ``surrogate`` with ``detector``."""

    def __init__(self, attack: str) -> None:
        super().__init__()
        self.surrogate, self.detector, self.attack = nn.Identity(), object(), attack

    def adaptive(self) -> SimpleNamespace:
        return SimpleNamespace(attack=self.attack, attack_kwargs={"steps": 7},
                               model=self.surrogate, detector=self.detector)


def test_the_defense_names_its_attack_in_the_runs_norm() -> None:
    d = Defended("pgd")
    a = adaptive.defense_attack(d, "linf", ("fgsm", {}))
    assert (a.name, a.kwargs, a.surrogate, a.detector) == ("pgd", {"steps": 7}, d.surrogate,
                                                           d.detector)
    assert adaptive.defense_attack(d, "l2", ("fgsm", {})).name == "pgd-l2"
    assert adaptive.adaptive_attack_of(d, "l2", ("fgsm", {})) == ("pgd-l2", {"steps": 7}, True)
    real = defenses.Transformed(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval(),
                                [defenses.BitDepth(1)])
    a = adaptive.defense_attack(real, "l2", ("fgsm", {}))
    assert a.name == "pgd-l2" and a.surrogate is not None and a.detector is None


def test_fallback_without_an_adaptive_attack_in_that_norm() -> None:
    fallback = ("apgd-dlr", {"steps": 100})
    plain = adaptive.defense_attack(nn.Identity(), "linf", fallback)
    assert plain == adaptive.DefenseAttack("apgd-dlr", {"steps": 100})
    assert adaptive.adaptive_attack_of(Defended("no-such-attack"), "linf", fallback) == \
        ("apgd-dlr", {"steps": 100}, False)


def test_logit_attack_and_pgd_names() -> None:
    assert "apgd-dlr" in attacks.available() and "apgd-dlr-l2" in attacks.available()
    assert adaptive.logit_attack("linf") == ("apgd-dlr", {"steps": 100})
    assert adaptive.logit_attack("l2") == ("apgd-dlr-l2", {"steps": 100})
    assert [adaptive.pgd_name(n) for n in ("linf", "l2", "l1")] == ["pgd", "pgd-l2", "pgd-l1"]
