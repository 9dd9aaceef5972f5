"""advlab.evaluation.ladder: the adaptive-attack ladder and its verdicts.

The ladder against members of the masked suite (tests/masked_suite.py) on a small batch, no
false alarm on the zoo's honest models, the rules that settle a finding, and a run whose
finding is settled (or not) reaching results.json and the report.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import advlab
import masked_suite
from advlab.errors import ConfigError
from advlab.evaluation import ladder, runner, sanity
from advlab.evaluation.config import RunConfig, config_from_dict
from advlab.report.html import write_report
from testkit import Floor, box_images

# ----------------------------------------------------------------------------- the ladder


FAST = ladder.Options(steps=20, eot_samples=4, draws=3, square_queries=100,
                      label_queries=0, distill_epochs=0, unbounded_examples=8)


@pytest.mark.parametrize("name, rung", [("saturated-softmax", "logits"),
                                        ("bit-depth-2", "bpda"),
                                        ("argmax-one-hot", "bpda"),
                                        ("knn-vote", "bpda"),
                                        ("inline-quantized", "bpda")])
def test_ladder_breaks_suite_members(suite, mnist_test, name, rung) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    m = suite[name]
    x, y = masked_suite.correct(m, *mnist_test, 12)
    findings = sanity.run_all(m.model, x, y, eps=0.3, blackbox_queries=100)
    fired = [f for f in findings if f.fired]
    assert fired and all(f.attack == ladder.NAME for f in fired)
    s = ladder.settle(m.model, x, y, 0.3, findings, options=FAST)
    ref = m.reference(x, y, 0.3)
    ceiling = 1 - ladder.judge(m.model, ref, y).float().mean().item()   # 0 but inline: 0.83
    assert s.robust_accuracy <= max(0.1, ceiling) and rung in [r.name for r in s.rungs
                                                               if r.new > 0]
    assert s.settled
    if name == "inline-quantized":                           # found by the function mode
        assert "<forward> (straight-through: float of a step, floor)" in s.rungs[1].detail
    assert bool(ladder.judge(m.model, s.x_adv[s.fooled], y[s.fooled]).all())
    assert (s.x_adv - x).abs().amax() <= 0.3 + 1e-6


@pytest.mark.slow
def test_ladder_randomized_member_uses_eot(suite, mnist_test) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    m = suite["random-discretize"]
    x, y = masked_suite.correct(m, *mnist_test, 8)
    findings = sanity.run_all(m.model, x, y, eps=0.3, blackbox_queries=50)
    assert "randomness" in [f.name for f in findings if f.fired]
    s = ladder.settle(m.model, x, y, 0.3, findings, options=FAST)
    assert "EOT" in s.rungs[0].detail and s.robust_accuracy <= 0.25


@pytest.mark.parametrize("name", ["mnist-mlp", "mnist-cnn"])
def test_no_false_alarm_on_honest_models(name, mnist_test) -> None:  # noqa: ANN001
    model = advlab.zoo.load(name)
    x, y = mnist_test
    findings = sanity.run_all(model, x[:40], y[:40], eps=0.3, blackbox_queries=200)
    assert [f.name for f in findings if f.fired] == []
    s = ladder.settle(model, x[:40], y[:40], 0.3, findings)
    assert s.rungs == [] and s.findings == {} and not s.fooled.any()


def test_open_findings_rules() -> None:
    f = [{"name": "gradients", "fired": True, "evidence": {}},
         {"name": "blackbox-vs-whitebox", "fired": True,
          "evidence": {"weak_success": 0.6, "strong_success": 0.1}},
         {"name": "softmax", "fired": False}]
    useless = [ladder.Rung("logits", "", 10, 0, 1.0, 0.0, unbounded=0.2)]
    useful = [*useless, ladder.Rung("bpda", "", 10, 9, 0.1, 0.0, unbounded=1.0)]
    assert ladder.open_findings(f, useless, 0.1, 0.02) == {
        "gradients": "open", "blackbox-vs-whitebox": "open"}
    assert ladder.open_findings(f, useful, 0.59, 0.02) == {
        "gradients": "settled", "blackbox-vs-whitebox": "settled"}


def test_a_zero_figure_settles_every_finding() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, dtype=torch.float64)).eval()
    x = box_images(8)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 3                 # the naive attack fooled all
    f = [{"name": "randomness", "fired": True, "evidence": {}}]
    s = ladder.settle(model, x, wrong, 0.3, f, naive=x)
    assert s.rungs == [] and s.robust_accuracy == 0.0 and s.findings == {"randomness": "settled"}


def test_unbounded_recheck_runs_until_a_rung_passes_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, dtype=torch.float64)).eval()
    x = box_images(16)
    with torch.no_grad():
        y = model(x).argmax(1)
    f = [{"name": "gradients", "fired": True, "evidence": {}}]
    opts = ladder.Options(steps=10, square_queries=0, label_queries=0, exhaustive=True,
                          rungs=("logits", "transfer"), unbounded_examples=8)
    s = ladder.settle(model, x, y, 0.01, f, surrogates=[copy.deepcopy(model)], options=opts)
    logits, transfer = s.rungs
    assert logits.unbounded is not None and logits.unbounded >= ladder.UNBOUNDED_RATE
    assert transfer.unbounded is None and s.findings == {"gradients": "settled"}


def test_gradient_rung_does_not_attack_where_the_jacobian_is_zero(monkeypatch) -> None:  # noqa: ANN001
    model = nn.Sequential(Floor(), nn.Flatten(), nn.Linear(16, 3, dtype=torch.float64)).eval()
    x = box_images(16)
    with torch.no_grad():
        y = model(x).argmax(1)
    calls = []
    real = ladder.Attack.__call__
    monkeypatch.setattr(ladder.Attack, "__call__",
                        lambda self, *a, **k: calls.append(self) or real(self, *a, **k))
    f = [{"name": "gradients", "fired": True, "evidence": {}}]
    opts = ladder.Options(steps=10, rungs=("logits",))
    s = ladder.settle(model, x, y, 0.01, f, options=opts)
    (logits,) = s.rungs
    assert calls == [] and logits.attacked == 16 and "16 example-target pairs" in logits.detail
    assert logits.unbounded == 0.0 and s.findings == {"gradients": "open"}


# ----------------------------------------------------------------------------- the run


class Lookup(nn.Module):
    """A classifier with no submodule and a zero gradient: a table of logits indexed by an
    integer (the count of image pixels above 1, always 0 in [0, 1]: the model is constant,
    hence robust, but nothing shows it). No gradient rung can follow an integer lookup, no
    surrogate exists (no base, no distillation), no attack fools it: its findings stay open,
    on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", 10 * torch.randn(65, 10, generator=torch.Generator()
                                                       .manual_seed(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = (x.flatten(1) > 1.0).long().sum(1)
        attached = 0.0 * x.flatten(1).sum(1, keepdim=True)    # a zero gradient, not none
        return self.table[count] + attached


def _config(eps=0.3, **sanity) -> RunConfig:  # noqa: ANN001
    return config_from_dict({
        "name": "masked", "batch_size": 24, "models": ["m"], "data": {"name": "x", "n": 24},
        "attacks": [{"name": "pgd", "eps": eps, "params": {"steps": 10}}],
        "report": {"gallery": 2, "eps": 0.3}, "workers": 1,
        "sanity": {"enabled": True, "max_examples": 24, "blackbox_queries": 100,
                   "ladder_steps": 10, "ladder_square_queries": 50,
                   "ladder_label_queries": 0, "ladder_distill_epochs": 0, **sanity}})


def _run(tmp_path: Path, model: nn.Module, data, train, eps=0.3, **sanity) -> dict:  # noqa: ANN001
    runner.run(_config(eps, **sanity), root=tmp_path, models={"m": model}, data=data,
               train_data=train)
    write_report(tmp_path / "masked")
    return json.loads((tmp_path / "masked" / "results.json").read_text())


def test_run_settles_a_finding_and_reports_the_verdict(tmp_path: Path, tiny_factory) -> None:  # noqa: ANN001
    base = tiny_factory(0)
    model = masked_suite.BitDepth(base, 1).eval()
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    res = _run(tmp_path, model, (x, y), (x, y), eps=[0.2, 0.3])
    assert sorted(v["eps"] for v in res["verdicts"]) == [0.2, 0.3]  # each eps, not only 0.3
    for v in res["verdicts"]:
        assert v["verdict"] == "settled" and v["findings"] and v["ladder"]
        assert set(v["findings"].values()) == {"settled"}
        at = [c for c in res["cells"] if c["eps"] == v["eps"]]
        ladder_cell = next(c for c in at if c["attack"] == ladder.NAME)
        naive = next(c for c in at if c["attack"] == "pgd")
        assert v["robust_accuracy"] <= min(naive["robust_accuracy"],
                                           ladder_cell["robust_accuracy"])
        assert v["robust_accuracy"] < naive["robust_accuracy"]   # the naive figure is not it
    assert {g["eps"] for g in res["run"]["env"]["sanity"]} == {0.2, 0.3}
    page = (tmp_path / "masked" / "report.html").read_text()
    assert "settled: every fired check is settled" in page and "(unreliable)" not in page


def test_ladder_rungs_choose_the_climb(tmp_path: Path, tiny_factory) -> None:  # noqa: ANN001
    model = masked_suite.BitDepth(tiny_factory(0), 1).eval()
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    res = _run(tmp_path, model, (x, y), (x, y), ladder_rungs=[])   # the ladder switched off
    (v,) = res["verdicts"]
    cell = next(c for c in res["cells"] if c["attack"] == ladder.NAME)
    assert v["verdict"] == "unreliable" and set(v["findings"].values()) == {"open"}
    assert cell["robust_accuracy"] == 1.0      # no rung: it attacked nothing
    assert v["robust_accuracy"] == v["naive_robust_accuracy"] < 1.0
    with pytest.raises(ConfigError, match=r"ladder_rungs\[1\] must be one of logits"):
        _config(ladder_rungs=["logits", "guess"])


def test_open_finding_makes_the_figure_unreliable(tmp_path: Path) -> None:
    model = Lookup().eval()
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    res = _run(tmp_path, model, (x, y), (x, y))
    (v,) = res["verdicts"]
    assert v["verdict"] == "unreliable" and "open" in v["findings"].values()
    assert v["robust_accuracy"] <= v["naive_robust_accuracy"]
    page = (tmp_path / "masked" / "report.html").read_text()
    assert "(unreliable)</b>" in page and 'class="warn"' in page


