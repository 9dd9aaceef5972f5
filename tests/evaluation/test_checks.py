"""advlab.evaluation.checks: each sanity check fires on a purpose-built masked model and stays
silent on an honest one."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from advlab import attacks, defenses
from advlab.evaluation import sanity


class Saturated(nn.Module):
    """Logits x 1e4: the same decisions, a softmax saturated to exactly one-hot."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.training = False  # mode-free wrapper of an eval-mode model

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) * 1e4


class Softmaxed(Saturated):
    """Probabilities instead of logits."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.base(x), 1)


class GridOnly(Saturated):
    """Gradients flow only at images on the 8-bit grid (clean data): FGSM, which starts at x,
    sees them; PGD, which starts at a random point of the ball, sees none."""

    def forward(self, x: Tensor) -> Tensor:
        v = x * 255
        q = torch.round(v) / 255
        on = ((v - torch.round(v)).abs() < 1e-3).flatten(1).all(1)
        z = torch.where(on[:, None, None, None], x, q.detach())
        return self.base(z)


class NaNGradient(Saturated):
    """sqrt at 0 in the graph: finite logits, NaN input gradients."""

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + 0.0 * torch.sqrt(x).sum((1, 2, 3))[:, None]


def _fired(findings: list[sanity.Finding]) -> set[str]:
    return {f.name for f in findings if f.fired}


def test_softmax_outputs(mlp, mnist100):
    f = sanity.check_softmax(Softmaxed(mlp), mnist100[0])
    assert f.fired and f.attack is not None and f.level == "warning"
    findings = sanity.run_all(Softmaxed(mlp), *mnist100)  # attack checks skipped, not crashed
    assert [f.skipped for f in findings][3:] == [True, True, True, False]
    assert findings[-1].name == "binarization" and not findings[-1].fired  # on the features


def test_randomness_names_eot(mlp, mnist100):
    noisy = defenses.Transformed(mlp, defenses.GaussianNoise(0.3))
    f = sanity.check_randomness(noisy, mnist100[0])
    assert f.fired and f.evidence["max_logit_difference"] > 0
    if "eot-pgd" in attacks.available():
        assert f.attack == "eot-pgd" and f.on_surrogate and f.attack_kwargs["samples"] > 1
    assert not sanity.check_randomness(mlp, mnist100[0]).fired


def test_vanishing_and_nan_gradients(mlp, mnist100):
    x, y = mnist100
    f = sanity.check_gradients(Saturated(mlp), x, y)
    assert f.fired and f.evidence["vanishing"] > 0.5
    assert f.attack in ("apgd-dlr", "pgd")  # an attack on the logits
    bits = defenses.Transformed(mlp, defenses.BitDepth(1))
    f = sanity.check_gradients(bits, x, y)
    assert f.fired and f.evidence["vanishing"] == 1.0
    assert f.on_surrogate and f.attack == "pgd"  # BPDA through the bit-depth reduction
    f = sanity.check_gradients(NaNGradient(mlp), x, y)
    assert f.fired and f.evidence["nan_or_inf"] > 0
    ok = sanity.check_gradients(mlp, x, y)
    assert not ok.fired and ok.evidence["vanishing"] == 0.0


def test_one_step_beats_iterative(mlp, mnist100):
    x, y = mnist100
    f = sanity.check_one_step_vs_iterative(GridOnly(mlp), x, y, eps=0.2)
    assert f.fired, f.message
    assert f.evidence["success_fgsm"] > f.evidence["success_pgd"] + 0.2
    # measured rates given by the caller are used instead of new attack runs
    given = sanity.check_one_step_vs_iterative(mlp, x, y, results={"fgsm": 0.5, "pgd": 0.1})
    assert given.fired and given.evidence == {"success_fgsm": 0.5, "success_pgd": 0.1,
                                              "weak_success": 0.5, "strong_success": 0.1}


def test_unbounded_eps_must_reach_everything(mlp, mnist100):
    x, y = mnist100
    bits = defenses.Transformed(mlp, defenses.BitDepth(1))
    f = sanity.check_unbounded(bits, x, y)
    assert f.fired and f.evidence["success_eps_1"] < 0.95
    assert f.on_surrogate  # run BPDA on bits.adaptive().model
    assert not sanity.check_unbounded(mlp, x, y).fired


def test_blackbox_beats_whitebox(mlp, mnist100):
    x, y = mnist100
    if "square" not in attacks.available():
        f = sanity.check_blackbox_vs_whitebox(mlp, x, y)
        assert f.skipped and not f.fired
        pytest.skip("no black-box attack registered yet")
    bits = defenses.Transformed(mlp, defenses.BitDepth(1))
    f = sanity.check_blackbox_vs_whitebox(bits, x, y, queries=300)
    assert f.fired, f.message
    given = sanity.check_blackbox_vs_whitebox(mlp, x, y, results={"square": 0.2, "pgd": 0.9})
    assert not given.fired and given.evidence == {"success_square": 0.2, "success_pgd": 0.9,
                                                  "weak_success": 0.2, "strong_success": 0.9}


def test_blackbox_check_confirms_with_a_strong_whitebox_attack(mlp, mnist100):
    # a weak white-box figure (a fixed-step PGD falls behind Square on robust models) is not
    # masking: before firing, the check runs APGD-CE + APGD-DLR, which break the plain mlp
    x, y = mnist100
    f = sanity.check_blackbox_vs_whitebox(mlp, x, y, results={"square": 0.5, "pgd": 0.1})
    assert not f.fired, f.message
    assert f.evidence["success_apgd-ce+apgd-dlr"] > 0.9 and f.evidence["success_square"] == 0.5


def test_finding_to_dict():
    f = sanity.Finding("gradients", True, "zero", {"vanishing": 1.0}, "pgd", {"steps": 10})
    d = f.to_dict()
    assert d["check"] == "gradients" and d["level"] == "warning" and d["attack"] == "pgd"


def test_gradients_check_on_a_model_without_a_graph_to_its_input(mnist100):
    class DetachedInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.detach().flatten(1))

    torch.manual_seed(0)
    f = sanity.check_gradients(DetachedInput().eval(), *mnist100)   # parameters alone: no path
    assert f.fired and f.evidence["vanishing"] == 1.0
