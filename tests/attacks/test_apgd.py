"""APGD: the published schedule exactly, the halving rules, DLR's class check, and strength
against PGD on the zoo models."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import advlab
from advlab.attacks import APGD, PGD, AutoAttack
from advlab.attacks.apgd import APGDT, RunState, checkpoint_fractions, checkpoints
from advlab.errors import LabelError, ThreatModelError, UnknownNameError
from testkit import Counted


def test_checkpoints_match_the_paper() -> None:
    # Croce & Hein 2020, Section 3.2: p_0 = 0, p_1 = 0.22,
    # p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j N_iter)
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert checkpoint_fractions() == pytest.approx(p)
    assert checkpoint_fractions() == pytest.approx(
        [0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99])
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1000) == [0, 220, 410, 570, 700, 800, 870, 930, 990]
    for n in (10, 37, 250):
        want = sorted({math.ceil(round(q * n, 6)) for q in p})
        assert checkpoints(n) == want


def _state(count: float, reduced_last: bool, fmax: float, fmax_last: float) -> RunState:
    one, zeros, ones = torch.ones(1), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    return RunState(owner=torch.zeros(1, dtype=torch.long), x=zeros, y=torch.zeros(1).long(),
                    eps=one * 0.2, loss_target=None, goal_target=None, eta=one * 0.4, xk=zeros,
                    xprev=zeros, fk=one * 0.0, gk=zeros, xmax=ones, fmax=one * fmax, gmax=ones,
                    count=one * count, fmax_last=one * fmax_last,
                    reduced_last=torch.tensor([reduced_last]))


@pytest.mark.parametrize("count, reduced_last, fmax, fmax_last, halve", [
    (16, False, 2.0, 1.0, True),    # condition 1: 16 < 0.75 * 22 = 16.5 increases
    (17, False, 2.0, 1.0, False),   # enough increases and f_max improved
    (17, False, 1.0, 1.0, True),    # condition 2: not halved last time and no improvement
    (17, True, 1.0, 1.0, False),    # ... but halved last time: keep eta
])
def test_halving_conditions(count: float, reduced_last: bool, fmax: float, fmax_last: float,
                            halve: bool) -> None:
    s = APGD(eps=0.2)._check(_state(count, reduced_last, fmax, fmax_last), length=22)
    assert s.eta.item() == pytest.approx(0.2 if halve else 0.4)
    assert torch.equal(s.xk, torch.ones(1, 1, 2, 2) if halve else torch.zeros(1, 1, 2, 2))
    assert s.reduced_last.item() == halve and s.count.item() == 0
    assert s.fmax_last.item() == fmax


class Linear(nn.Module):
    def __init__(self, k: int, d: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(k, d, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T


def test_dlr_needs_three_classes_and_targeted_four() -> None:
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(LabelError, match="at least 3 classes"):
        advlab.attacks.get("apgd-dlr")(Linear(2).eval(), x, y)
    with pytest.raises(LabelError, match="at least 4 classes"):
        advlab.attacks.get("apgd-t")(Linear(3).eval(), x, y)
    with pytest.raises(LabelError, match="at least 4 classes"):
        advlab.attacks.get("apgd-dlr")(Linear(3).eval(), x, y, target=(y + 1) % 3)
    res = advlab.attacks.get("apgd-ce", steps=5)(Linear(2).eval(), x, y)  # CE: fine
    assert res.x_adv.shape == x.shape


def test_bad_settings() -> None:
    with pytest.raises(ThreatModelError):
        APGD(norm="l1")
    with pytest.raises(UnknownNameError):
        APGD(loss="hinge")
    with pytest.raises(ThreatModelError):
        APGDT(n_targets=0)
    with pytest.raises(ThreatModelError):
        advlab.attacks.get("autoattack-mt", losses=("dlr", "hinge"))
    with pytest.raises(ThreatModelError, match="untargeted"):
        AutoAttack(eps=0.1)(Linear(10).eval(), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]),
                            target=torch.tensor([2, 3]))


def test_autoattack_members_from_the_registry() -> None:
    run, skipped = AutoAttack().resolve()
    assert run == ["apgd-ce", "apgd-t", "fab-t", "square"] and skipped == []
    run, skipped = AutoAttack(members=["apgd-ce", "no-such-attack"]).resolve()
    assert run == ["apgd-ce"] and skipped == ["no-such-attack"]
    assert AutoAttack().member_kwargs["square"]["max_queries"] == 5000
    aa = AutoAttack(member_kwargs={"square": {"p_init": 0.5}})
    assert aa.member_kwargs["square"] == {"max_queries": 5000, "p_init": 0.5}


@pytest.mark.slow
def test_apgd_strength_on_the_zoo(mnist_test, mlp, cnn) -> None:
    x, y = mnist_test
    for model in (mlp, cnn):  # eps = 0.3: nothing stays robust
        assert advlab.attacks.get("apgd-ce", eps=0.3)(model, x[:50], y[:50]).success.all()
    # at a smaller eps PGD leaves some accuracy; APGD, same iterations, leaves no more
    x, y = x[:200], y[:200]
    pgd = PGD(eps=0.08, steps=100)(mlp, x, y)
    apgd = APGD(eps=0.08, steps=100)(mlp, x, y)
    assert 0 < (~pgd.success).sum() and (~apgd.success).sum() <= (~pgd.success).sum()


def _linear_case(k: int = 10) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = Linear(k).eval()
    x = 0.5 + 0.05 * torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _boundary_distance(model: Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """N x K: the exact Linf distance to each class's boundary with y (box not binding)."""
    with torch.no_grad():
        z = model(x)
    w = model.w.detach()
    d = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).abs().sum(2)
    return d.scatter(1, y[:, None], float("inf"))


def test_apgd_t_fools_exactly_where_a_top_target_boundary_is_within_eps() -> None:
    model, x, y = _linear_case()
    d = _boundary_distance(model, x, y)
    with torch.no_grad():
        top = model(x).scatter(1, y[:, None], float("-inf")).argmax(1)
    d_top = d.gather(1, top[:, None]).squeeze(1)
    eps = torch.where(torch.arange(12) % 2 == 0, 1.15 * d_top, 0.9 * d.amin(1))
    assert (eps < 0.4).all()
    res = APGDT(n_targets=1)(model, x, y, eps=eps)
    assert torch.equal(res.success, torch.arange(12) % 2 == 0)


def test_apgd_t_margin_loss_fools_exactly_where_a_top_target_boundary_is_within_eps() -> None:
    model, x, y = _linear_case()
    d = _boundary_distance(model, x, y)
    with torch.no_grad():
        top = model(x).scatter(1, y[:, None], float("-inf")).argmax(1)
    d_top = d.gather(1, top[:, None]).squeeze(1)
    eps = torch.where(torch.arange(12) % 2 == 0, 1.15 * d_top, 0.9 * d.amin(1))
    res = APGDT(n_targets=1, loss="margin")(model, x, y, eps=eps)
    assert torch.equal(res.success, torch.arange(12) % 2 == 0)


def test_apgd_t_stops_an_example_at_its_first_fooling_target() -> None:
    model, x, y = _linear_case()
    counted = Counted(model).eval()
    res = APGDT(eps=0.45, n_targets=9)(counted, x, y)
    assert res.success.all()
    # the first target fools all 12 within a few steps: no run towards the other 8
    assert counted.rows <= 12 * 4 + 2 * 12


def test_apgd_t_tries_the_targets_in_turn_on_the_examples_still_robust(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y = _linear_case()
    d = _boundary_distance(model, x, y)
    with torch.no_grad():
        ranked = model(x).scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
    even = torch.arange(12) % 2 == 0  # fooled by the first target; the odd ones by none
    eps = torch.where(even, 1.15 * d.gather(1, ranked[:, :1]).squeeze(1), 0.9 * d.amin(1))
    runs = []
    run_rows = APGDT.run_rows

    def spy(self, model, x, y, eps, owner, loss_target, goal_target, generator):
        runs.append((owner, loss_target))
        return run_rows(self, model, x, y, eps, owner, loss_target, goal_target, generator)

    monkeypatch.setattr(APGDT, "run_rows", spy)
    res = APGDT(n_targets=3, restarts=2)(model, x, y, eps=eps)
    assert torch.equal(res.success, even)
    # target 1 (two restarts: the second on the examples the first left), then targets 2, 3
    odd = (~even).nonzero().squeeze(1)
    assert torch.equal(runs[0][0], torch.arange(12))
    assert torch.equal(runs[0][1], ranked[:, 0])
    assert len(runs) == 6
    for (owner, target), rank in zip(runs[1:], (0, 1, 1, 2, 2)):
        assert torch.equal(owner, odd) and torch.equal(target, ranked[odd, rank])


def test_odi_start_is_the_sign_step_of_a_random_output_direction() -> None:
    model, x, y = _linear_case()
    atk = APGD(eps=0.1, random_start=False, odi_steps=1)
    eps = torch.full((12,), 0.1)
    got = atk._diversified(model, x, x, eps, torch.Generator().manual_seed(0))
    w = 2 * torch.rand(12, 10, generator=torch.Generator().manual_seed(0)) - 1
    want = (x + 0.1 * torch.sign(w @ model.w.detach()).view_as(x)).clamp(0, 1)
    assert torch.allclose(got, want)


def test_autoattack_mt_spends_its_rounds_on_the_closest_points() -> None:
    model, x, y = _linear_case()
    d = _boundary_distance(model, x, y).amin(1)
    eps = 0.5 * d  # nothing can be fooled: every example survives every round
    res = advlab.attacks.get("autoattack-mt", schedule=(1.0, 0.5))(model, x, y, eps=eps)
    assert not res.success.any()
    assert res.info["attacked"] == {"apgd-ce": 12, "apgd-t": 12, "apgd-t-odi-1": 12,
                                    "apgd-t-odi-2": 6, "apgd-dlr-closest": 1}
    assert res.info["robust_after"]["apgd-dlr-closest"] == 12
    for bad in ({"schedule": (0.0,)}, {"closest": 1.5}, {"closest_restarts": -1}):
        with pytest.raises(ThreatModelError):
            advlab.attacks.get("autoattack-mt", **bad)


def test_autoattack_mt_gives_the_closest_point_its_restarts() -> None:
    """The last round runs APGD-DLR with closest_restarts random starts side by side, on
    the robust example with the lowest margin only."""
    model, x, y = _linear_case()
    d = _boundary_distance(model, x, y).amin(1)
    eps = 0.5 * d
    counted = Counted(model).eval()
    res = advlab.attacks.get("autoattack-mt", schedule=(0.5,), closest=0.1,
                             closest_restarts=7)(counted, x, y, eps=eps)
    assert res.info["attacked"]["apgd-dlr-closest"] == 2  # ceil(0.1 * 12)
    assert 7 * 2 in counted.sizes and max(counted.sizes) == 7 * 2  # the restarts, side by side


@pytest.mark.slow
def test_autoattack_mt_at_least_as_strong_as_autoattack(mnist_test, mlp) -> None:
    x, y = mnist_test
    x, y = x[:60], y[:60]
    aa = advlab.attacks.get("autoattack", eps=0.1)(mlp, x, y)
    mt = advlab.attacks.get("autoattack-mt", eps=0.1)(mlp, x, y)
    assert 0 < (~aa.success).sum() and (~mt.success).sum() <= (~aa.success).sum()


def test_apgd_t_in_row_blocks_fools_the_same_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    from advlab.attacks import apgd

    model, x, y = _linear_case()
    d = _boundary_distance(model, x, y).amin(1)
    eps = torch.where(torch.arange(12) % 3 == 0, 0.8 * d, 1.5 * d)
    whole = APGDT()(model, x, y, eps=eps)
    monkeypatch.setattr(apgd, "ROW_BLOCK", 20)  # two examples (18 rows) per block
    blocks = APGDT()(model, x, y, eps=eps)
    assert torch.equal(whole.success, torch.arange(12) % 3 != 0)
    assert torch.equal(blocks.success, whole.success)


def test_row_blocks_give_the_model_s_logits_and_gradients_in_blocks() -> None:
    from advlab.attacks.base import RowBlocks

    model, x, _ = _linear_case()
    counted = Counted(model).eval()
    blocked = RowBlocks(counted, 5)
    xa = x.clone().requires_grad_(True)
    z = blocked(xa)
    (g,) = torch.autograd.grad(z[:, 3].sum(), xa)
    assert counted.calls == 3 and counted.rows == 12  # blocks of 5, 5 and 2 rows
    assert torch.equal(z.detach(), model(x).detach())
    assert torch.allclose(g, model.w.detach()[3].view(1, 1, 4, 4).expand_as(x))


def test_logits_and_grad_runs_each_block_s_backward_before_the_next_forward() -> None:
    from advlab.attacks.base import RowBlocks, logits_and_grad

    model, x, y = _linear_case()
    events: list[str] = []

    class Logged(nn.Module):
        def forward(self, xb: torch.Tensor) -> torch.Tensor:
            events.append(f"forward {len(xb)}")
            xb.register_hook(lambda g: events.append("backward"))
            return model(xb)

    logits, grad = logits_and_grad(RowBlocks(Logged(), 5), x,
                                   lambda z, rows: z.gather(1, y[rows, None]).squeeze(1))
    assert events == ["forward 5", "backward", "forward 5", "backward", "forward 2",
                      "backward"]
    assert torch.equal(logits, model(x).detach())
    torch.testing.assert_close(grad, model.w.detach()[y].view_as(x))
    events.clear()
    logits_and_grad(Logged(), x, lambda z, rows: z.gather(1, y[rows, None]).squeeze(1))
    assert events == ["forward 12", "backward"]  # a plain model: one pass


def test_row_blocks_leave_an_oracle_whole_and_size_blocks_by_image() -> None:
    from advlab.attacks.base import BLOCK_ELEMENTS, RowBlocks
    from advlab.attacks.blackbox import Oracle

    model, x, _ = _linear_case()
    oracle = Oracle(model)
    assert RowBlocks.around(oracle, x) is oracle  # its queries are counted per call
    blocked = RowBlocks.around(model, x)
    assert isinstance(blocked, RowBlocks) and blocked.rows == BLOCK_ELEMENTS // 16


def test_autoattack_in_row_blocks_returns_the_same_images(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from advlab.attacks import base

    model, x, y = _linear_case()
    d = _boundary_distance(model, x, y).amin(1)
    eps = torch.where(torch.arange(12) % 3 == 0, 0.8 * d, 1.5 * d)
    short = {"apgd-ce": {"steps": 10}, "apgd-t": {"steps": 10}, "fab-t": {"steps": 10},
             "square": {"max_queries": 50}}
    whole = AutoAttack(member_kwargs=short)(model, x, y, eps=eps)
    monkeypatch.setattr(base, "BLOCK_ELEMENTS", 3 * 16)  # blocks of 3 rows
    blocks = AutoAttack(member_kwargs=short)(model, x, y, eps=eps)
    assert torch.equal(whole.success, torch.arange(12) % 3 != 0)
    assert torch.equal(blocks.x_adv, whole.x_adv) and torch.equal(blocks.success,
                                                                  whole.success)


class _Conv(nn.Module):
    """A tiny conv net; ``view=True`` flattens with ``view``, which channels-last
    activations do not allow."""

    def __init__(self, view: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc, self.view = nn.Conv2d(2, 3, 3), nn.Linear(3 * 4 * 4, 5), view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(len(h), -1) if self.view else h.flatten(1))


def test_channels_last_copies_rows_into_that_layout_for_any_channel_count() -> None:
    from advlab.attacks.base import channels_last

    for c in (1, 3):
        x = torch.rand(4, c, 5, 6, requires_grad=True)
        got = channels_last(x)
        assert got.stride() == (c * 30, 1, 6 * c, c) and torch.equal(got, x)
        (g,) = torch.autograd.grad((got * torch.arange(float(got.numel())).view_as(x)).sum(), x)
        assert torch.equal(g, torch.arange(float(x.numel())).view_as(x))


def test_row_blocks_give_a_conv_net_channels_last_rows_when_it_takes_them(
        caplog: pytest.LogCaptureFixture) -> None:
    from advlab.attacks.base import RowBlocks

    x = torch.rand(7, 2, 6, 6)
    conv = _Conv().eval()
    blocked = RowBlocks.around(conv, x)
    assert isinstance(blocked, RowBlocks) and blocked.channels_last
    xa = x.clone().requires_grad_(True)
    z = blocked(xa)
    (g,) = torch.autograd.grad(z[:, 1].sum(), xa)
    xb = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(conv(xb)[:, 1].sum(), xb)
    assert torch.allclose(z, conv(x), atol=1e-6) and torch.allclose(g, want, atol=1e-6)
    with caplog.at_level("INFO"):
        assert not RowBlocks.around(_Conv(view=True).eval(), x).channels_last
    assert "channels-last ones fail" in caplog.text
    assert not RowBlocks.around(_Conv().train(), x).channels_last  # no forward in train mode
    model, x16, _ = _linear_case()  # no convolution: nothing to gain
    assert not RowBlocks.around(model, x16).channels_last


def test_autoattack_gives_a_conv_net_channels_last_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    from advlab.attacks import apgd

    seen = []
    around = apgd.RowBlocks.around
    monkeypatch.setattr(apgd.RowBlocks, "around",
                        lambda model, x: seen.append(around(model, x)) or seen[-1])
    x = torch.rand(6, 2, 6, 6)
    with torch.no_grad():
        y = _Conv().eval()(x).argmax(1)
    short = {"apgd-ce": {"steps": 2}, "apgd-t": {"steps": 2}, "fab-t": {"steps": 2},
             "square": {"max_queries": 3}}
    AutoAttack(eps=0.01, member_kwargs=short)(_Conv().eval(), x, y)
    assert len(seen) == 1 and seen[0].channels_last  # through the attack's checked model
