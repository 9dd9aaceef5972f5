"""Adversarial training: input model untouched, robustness gained, exact resume, progress."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab import attacks, defenses
from advlab.defenses.training import FitSettings, TrainingProgress, trades_adversary
from advlab.errors import InputError, ModelFileError, UnknownNameError

EPS = 0.1


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 1 - attacks.PGD(EPS, steps=10)(model, x, y).success.float().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("method,kw", [("madry", {"steps": 5}), ("trades", {"steps": 5}),
                                       ("fast", {})])
def test_methods_gain_robustness_and_leave_model_untouched(digits, plain_net, method, kw,
                                                           guard):
    x_tr, y_tr, x_te, y_te = digits
    check = guard(plain_net)
    robust = defenses.adversarial_training(plain_net, x_tr, y_tr, method=method, eps=EPS,
                                           epochs=5, lr=3e-3, **kw)
    check()
    assert robust is not plain_net and not robust.training
    assert all(p.grad is None for p in robust.parameters())
    # PGD-10 robust accuracy at eps 0.1: plain ~0.55, adversarially trained ~0.72-0.76
    assert _acc(robust, x_te, y_te) > 0.92
    assert _robust(robust, x_te, y_te) > _robust(plain_net, x_te, y_te) + 0.12


@pytest.mark.parametrize("method", ["madry", "trades", "fast", "lecture"])
def test_every_method_leaves_the_input_model_untouched(digits, plain_net, method, guard):
    x, y = digits[0][:96], digits[1][:96]
    check = guard(plain_net)
    kw = {"attack": [attacks.FGSM(EPS)]} if method == "lecture" else \
        {"eps": EPS, **({"steps": 2} if method != "fast" else {})}
    out = defenses.adversarial_training(plain_net, x, y, method=method, epochs=1, **kw)
    check()
    assert out is not plain_net and not out.training
    changed = [not torch.equal(a, b) for a, b in zip(out.state_dict().values(),
                                                     plain_net.state_dict().values())]
    assert any(changed)  # it did train (a copy)


def test_lecture_loop_learns_its_adversarial_examples(digits, plain_net, guard):
    x_tr, y_tr, x_te, y_te = digits
    check = guard(plain_net)
    fgsm = attacks.FGSM(EPS)
    robust = defenses.adversarial_training(plain_net, x_tr, y_tr, [fgsm], method="lecture",
                                           epochs=5, lr=3e-3)
    check()
    # FGSM examples of the TEST set crafted against the original model: the plain model gets
    # most of them wrong, the retrained one (trained on D U D_adv) mostly right
    x_adv = fgsm(plain_net, x_te, y_te).x_adv
    assert _acc(plain_net, x_adv, y_te) < 0.7
    assert _acc(robust, x_adv, y_te) > _acc(plain_net, x_adv, y_te) + 0.2
    assert _acc(robust, x_te, y_te) > 0.92


def test_lecture_loop_pretrains_and_iterates(digits, net_factory):
    x_tr, y_tr = digits[0][:300], digits[1][:300]
    seen = []
    net = defenses.lecture_training(net_factory(), x_tr, y_tr, attacks.FGSM(EPS), rounds=2,
                                    pretrain_epochs=1, epochs=1,
                                    progress=lambda p: seen.append(p.batches))
    # pretrain on D (5 batches of 64), round 1 on 2|D| (10), round 2 on 3|D| (15)
    assert sorted(set(seen)) == [5, 10, 15] and not net.training


def test_resume_is_exact_and_mismatch_refused(digits, net_factory, tmp_path):
    x_tr, y_tr = digits[0][:256], digits[1][:256]
    kw = {"eps": EPS, "steps": 3, "lr": 3e-3, "x_val": digits[2][:64], "y_val": digits[3][:64]}
    ckpt = tmp_path / "run"
    defenses.madry_training(net_factory(), x_tr, y_tr, epochs=2, checkpoint=ckpt, **kw)
    assert (ckpt / "checkpoint.safetensors").exists() and (ckpt / "checkpoint.json").exists()
    resumed = defenses.madry_training(net_factory(), x_tr, y_tr, epochs=4, checkpoint=ckpt, **kw)
    fresh = defenses.madry_training(net_factory(), x_tr, y_tr, epochs=4, **kw)
    for a, b in zip(resumed.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["epoch"] for h in resumed.train_history] == [1, 2, 3, 4]
    with pytest.raises(ModelFileError):
        defenses.madry_training(net_factory(), x_tr, y_tr, epochs=4, checkpoint=ckpt,
                                **{**kw, "eps": 0.2})


def test_progress_ramp_and_schedule(digits, net_factory):
    x_tr, y_tr = digits[0][:128], digits[1][:128]
    seen: list[TrainingProgress] = []
    defenses.fast_training(net_factory(), x_tr, y_tr, eps=0.2, epochs=4, batch_size=32,
                           eps_ramp=2, lr=0.01, lr_schedule="cyclic", progress=seen.append)
    batches = [p for p in seen if not p.end_of_epoch]
    assert len(batches) == 16 and sum(p.end_of_epoch for p in seen) == 4
    eps = [p.eps for p in batches]
    torch.testing.assert_close(torch.tensor(eps[:8]), torch.arange(1, 9) * 0.2 / 8)
    assert eps[8:] == [0.2] * 8
    lrs = [p.lr for p in batches]  # one cycle: 0 -> peak at 40% -> down
    assert lrs[0] == 0.0 and 0.009 < max(lrs) <= 0.01 and lrs.index(max(lrs)) == 6
    assert lrs[-1] < lrs[7]


def test_early_stopping_returns_best_weights(digits, net_factory):
    x_tr, y_tr, x_te, y_te = digits
    net = defenses.trades_training(net_factory(), x_tr[:256], y_tr[:256], eps=EPS, steps=3,
                                   epochs=3, lr=3e-3, x_val=x_te[:100], y_val=y_te[:100],
                                   patience=1)
    hist = net.train_history
    best = max(hist, key=lambda h: h["val_robust"])
    val_attack = attacks.PGD(EPS, steps=10, seed=1)  # the default held-out attack
    measured = 1 - val_attack(net, x_te[:100], y_te[:100]).success.float().mean().item()
    assert measured == pytest.approx(best["val_robust"])


def test_trades_adversary_raises_kl_inside_the_ball(plain_net, digits):
    x = digits[2][:64]
    g = torch.Generator().manual_seed(0)
    x_adv = trades_adversary(plain_net, x, 0.1, 10, 0.025, g)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        p = torch.softmax(plain_net(x), 1)
        kl = (p * (p.log() - torch.log_softmax(plain_net(x_adv), 1))).sum(1)
    assert kl.mean() > 0.1


def test_bad_arguments(digits, net_factory):
    x, y = digits[0][:32], digits[1][:32]
    with pytest.raises(UnknownNameError):
        defenses.adversarial_training(net_factory(), x, y, method="magic")
    with pytest.raises(InputError):
        defenses.adversarial_training(net_factory(), x, y, method="lecture")
    with pytest.raises(InputError):
        FitSettings(lr_schedule="warp")
    with pytest.raises(TypeError):
        defenses.madry_training(net_factory(), x, y, epoch=3)  # misspelt setting
    with pytest.raises(InputError):
        defenses.madry_training(net_factory(), x * 2, y)


def test_load_robust_cache(tmp_path, monkeypatch):
    from advlab import zoo

    monkeypatch.setenv("ADVLAB_HOME", str(tmp_path))
    with pytest.raises(UnknownNameError):
        defenses.load_robust("nope")
    with pytest.raises(ModelFileError):
        defenses.load_robust(train_if_missing=False)
    cached = zoo.build("mnist-cnn", seed=7)
    zoo.save(cached, tmp_path / "models" / "mnist-cnn-trades.safetensors",
             {"robust": "mnist-cnn-trades", "version": defenses.ROBUST["mnist-cnn-trades"][
                 "version"]})
    loaded = defenses.load_robust(train_if_missing=False)
    assert not loaded.training
    for a, b in zip(loaded.state_dict().values(), cached.state_dict().values()):
        assert torch.equal(a, b)
