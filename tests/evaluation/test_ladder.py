"""The adaptive-attack ladder, automatic BPDA, the binarization test and the verdicts.

Exact answers on tiny models (the BPDA gradient of a linear model behind a rounding is the
linear model's own), the ladder against members of the masked suite (tests/masked_suite.py)
on a small batch, no false alarm on the zoo's honest models, the binarization test passing
for PGD / APGD and failing for a crippled FGSM, and a run whose finding is settled (or not)
reaching results.json and the report.
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
from advlab.evaluation import bpda, ladder, runner, sanity
from advlab.evaluation.binarization import binarization_test
from advlab.evaluation.config import config_from_dict
from advlab.report.html import write_report

# ----------------------------------------------------------------------------- BPDA


class RoundInline(nn.Module):
    """w . round(4 x) / 4 written inline (the preprocessing is not a submodule)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((torch.round(x * 4) / 4).flatten(1))


class Floor(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x * 4) / 4


def _x(n: int = 32) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)


@pytest.mark.parametrize("make, where", [
    (lambda: RoundInline(), bpda.ROOT_INPUT),
    (lambda: nn.Sequential(Floor(), nn.Flatten(), nn.Linear(16, 3, dtype=torch.float64)), "0"),
])
def test_bpda_gradient_is_the_linear_models_own(make, where) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = make().eval()
    before = copy.deepcopy(model.state_dict())
    x = _x()
    layers = bpda.probe(model, x)
    assert [(s.name, s.replacement) for s in layers] == [(where, "identity")]
    net = bpda.straight_through(model, layers)
    assert torch.equal(net(x), model(x))                      # forward unchanged, bit for bit
    xg = x.clone().requires_grad_(True)
    r = torch.randn(len(x), 3, dtype=torch.float64)
    (g,) = torch.autograd.grad((net(xg) * r).sum(), xg)
    w = next(m for m in model.modules() if isinstance(m, nn.Linear)).weight
    assert torch.allclose(g.flatten(1), r @ w)                # d/dx of w . x, exactly
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_bpda_leaves_honest_layers_alone() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8, dtype=torch.float64), nn.ReLU(),
                          nn.Linear(8, 3, dtype=torch.float64)).eval()
    assert bpda.probe(model, _x()) == []


def test_bpda_fits_an_affine_map_for_a_shape_changing_head() -> None:
    class Vote(nn.Module):  # one-hot of the argmax of a linear map: N x 16 -> N x 3
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 3, dtype=torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.fc(x.flatten(1))
            return nn.functional.one_hot(z.argmax(1), 3).to(x.dtype)

    torch.manual_seed(0)
    model = Vote().eval()
    x = _x(200)
    layers = bpda.probe(model, x)
    assert [(s.name, s.why, s.replacement) for s in layers] == [
        (bpda.ROOT_OUTPUT, "detached", "affine")]
    a = layers[0].weight                                      # votes ~ z A + b
    assert bool((a.argmax(0) == torch.arange(3)).all())       # z_k raises the vote for k
    net = bpda.straight_through(model, layers)
    assert torch.equal(net(x), model(x))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xg)[:, 0].sum(), xg)
    want = (a[:, 0] @ model.fc.weight).expand(len(x), -1)     # the chain rule, exactly
    assert torch.allclose(g.flatten(1), want)


def test_has_gradient_needs_a_graph_to_the_input() -> None:
    head = nn.Linear(16, 3, dtype=torch.float64)  # its parameters alone make a graph
    assert not ladder.has_gradient(lambda x: head((x > 0.5).to(x.dtype).flatten(1)), _x())
    assert ladder.has_gradient(lambda x: head(x.flatten(1)), _x())
    attached = ladder.Attached(nn.Sequential(Floor(), nn.Flatten(), head)).eval()
    xg = _x().requires_grad_(True)
    (g,) = torch.autograd.grad(attached(xg).sum(), xg)      # attacks can run: it is zero
    assert not g.any() and torch.equal(attached(_x()), attached.model(_x()))


# ----------------------------------------------------------------------------- the ladder


@pytest.fixture(scope="module")
def suite(mnist_train, cnn):  # noqa: ANN001, ANN201
    torch.manual_seed(0)
    x, y = mnist_train
    return {m.name: m for m in masked_suite.build(cnn, x[:1000], y[:1000], steps=20)}


def _correct(m: masked_suite.Member, x: torch.Tensor, y: torch.Tensor, n: int):  # noqa: ANN202
    ok = ~ladder.judge(m.model, x, y, m.draws)
    return x[ok][:n], y[ok][:n]


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
    x, y = _correct(m, *mnist_test, 12)
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
    x, y = _correct(m, *mnist_test, 8)
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
    x = _x(8)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 3                 # the naive attack fooled all
    f = [{"name": "randomness", "fired": True, "evidence": {}}]
    s = ladder.settle(model, x, wrong, 0.3, f, naive=x)
    assert s.rungs == [] and s.robust_accuracy == 0.0 and s.findings == {"randomness": "settled"}


def test_unbounded_recheck_runs_until_a_rung_passes_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, dtype=torch.float64)).eval()
    x = _x(16)
    with torch.no_grad():
        y = model(x).argmax(1)
    f = [{"name": "gradients", "fired": True, "evidence": {}}]
    opts = ladder.Options(steps=10, square_queries=0, label_queries=0, exhaustive=True,
                          rungs=("logits", "transfer"), unbounded_examples=8)
    s = ladder.settle(model, x, y, 0.01, f, surrogates=[copy.deepcopy(model)], options=opts)
    logits, transfer = s.rungs
    assert logits.unbounded is not None and logits.unbounded >= ladder.UNBOUNDED_RATE
    assert transfer.unbounded is None and s.findings == {"gradients": "settled"}


# ----------------------------------------------------------------------------- binarization


def test_binarization_passes_for_pgd_and_apgd_fails_for_a_crippled_fgsm(mnist_test) -> None:  # noqa: ANN001
    model = advlab.zoo.load("mnist-mlp")
    x, y = mnist_test[0][:6], mnist_test[1][:6]
    pgd = binarization_test(model, x, y, lambda m, xi, z, e: advlab.attacks.PGD(
        eps=e, steps=20)(m, xi, z).x_adv, 0.3)
    apgd = binarization_test(model, x, y, lambda m, xi, z, e: advlab.attacks.get(
        "apgd-ce", eps=e, steps=20)(m, xi, z).x_adv, 0.3)
    weak = binarization_test(model, x, y, lambda m, xi, z, e: advlab.attacks.FGSM(
        eps=e / 10)(m, xi, z).x_adv, 0.3)
    assert pgd.tested >= 5 and pgd.pass_rate == 1.0 and apgd.pass_rate == 1.0
    assert weak.tested == pgd.tested and weak.pass_rate <= 0.5
    nothing = binarization_test(model, x, y, lambda m, xi, z, e: xi.clone(), 0.3)
    assert nothing.passed == 0                               # a do-nothing attack fails it
    f = sanity.check_binarization(model, x, y, lambda m, xi, z, e: advlab.attacks.FGSM(
        eps=e / 10)(m, xi, z).x_adv, eps=0.3)
    assert f.fired and f.evidence["pass_rate"] == weak.pass_rate


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


def _run(tmp_path: Path, model: nn.Module, data, train, eps=0.3) -> dict:  # noqa: ANN001
    cfg = config_from_dict({
        "name": "masked", "batch_size": 24, "models": ["m"], "data": {"name": "x", "n": 24},
        "attacks": [{"name": "pgd", "eps": eps, "params": {"steps": 10}}],
        "report": {"gallery": 2, "eps": 0.3}, "workers": 1,
        "sanity": {"enabled": True, "max_examples": 24, "blackbox_queries": 100,
                   "ladder_steps": 10, "ladder_square_queries": 50,
                   "ladder_label_queries": 0, "ladder_distill_epochs": 0}})
    runner.run(cfg, root=tmp_path, models={"m": model}, data=data, train_data=train)
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


def test_open_finding_makes_the_figure_unreliable(tmp_path: Path) -> None:
    from advlab.evaluation import verdicts

    cells = {"k": {"ladder": [{"findings": {"gradients": "settled"}},
                              {"findings": {"gradients": "open"}}]}}
    assert verdicts.finding_status({"check": "gradients", "cell": "k"}, cells) == "open"
    assert verdicts.finding_status({"check": "gradients", "cell": "gone"}, cells) == "open"
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


def test_binarization_check_fires_on_shattered_members_only(suite, mnist_test) -> None:  # noqa: ANN001
    x, y = mnist_test
    for name, fires in (("bit-depth-2", True), ("quantized-activations", True),
                        ("saturated-softmax", False)):
        xs, ys = _correct(suite[name], x, y, 8)
        f = sanity.check_binarization(suite[name].model, xs, ys, sanity.pgd_on_readout(),
                                      eps=0.3)
        assert f.evidence["tested"] >= 6
        assert f.fired == fires, (name, f.message)
        assert (f.evidence["pass_rate"] == 0.0) == fires         # masked: never found
    m = suite["gaussian-noise"]
    xs, ys = _correct(m, x, y, 8)
    f = next(f for f in sanity.run_all(m.model, xs, ys, blackbox_queries=20)
             if f.name == "binarization")
    assert f.skipped and not f.fired and "randomised" in f.message
