"""The substitute (Papernot et al.) attack: its settings and transfer attack, its oracle labels
and its strength over noise."""
from __future__ import annotations

import pytest
import torch

import advlab
import testkit
from advlab.errors import InputError, ParameterError, ThreatModelError, UnknownNameError

X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def test_substitute_recommended_setting_labels() -> None:
    """The docstring's recommended setting (ensemble, 3 rounds) labels seeds x 2^3 points."""
    model = testkit.LabelCounter().eval()
    y = model.labels(X)
    atk = advlab.attacks.get("substitute", seed_x=X, rounds=3, arch=("mlp", "cnn"),
                             width=(50, 16), weight_decay=1e-3, epochs=1)
    res = atk(model, X, y)
    assert res.info["oracle_labels"] == len(X) * 2 ** 3 == int(res.queries.sum())


def test_the_transfer_attack_runs_on_the_fitted_substitute() -> None:
    """x_adv is the named transfer attack, with its settings and the substitute's eps, run on
    the substitute that :meth:`fit` trains from the same seeds and labels."""
    model = testkit.LabelCounter().eval()
    y = model.labels(X)
    seeds = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    atk = advlab.attacks.get("substitute", eps=1.5, transfer_attack="pgd-l2",
                             transfer_kwargs={"steps": 3, "random_start": False}, seed_x=seeds,
                             rounds=1, epochs=2, arch="mlp", width=4, seed=2)
    assert (atk.eps, atk.norm, atk.settings.eps) == (1.5, "l2", 1.5)
    assert (atk.transfer.steps, atk.transfer.eps, atk.transfer.norm) == (3, 1.5, "l2")
    res = atk(model, X, y)
    fitted = atk.fit(model, len(X), seeds, y)
    expected = advlab.attacks.get("pgd-l2", eps=1.5, steps=3, random_start=False)(
        fitted.net, X, y).x_adv
    assert torch.equal(res.x_adv, expected) and not torch.equal(res.x_adv, X)
    assert res.info["oracle_labels"] == fitted.labels_used == len(seeds) * 2


def test_the_radius_defaults_to_the_transfer_attacks() -> None:
    atk = advlab.attacks.get("substitute")
    assert (atk.settings.eps, atk.eps, atk.norm, atk.transfer_attack) == (None, 0.3, "linf",
                                                                         "fgsm")
    assert advlab.attacks.get("substitute", transfer_attack="deepfool").eps is None
    other = atk.replace(transfer_kwargs={"eps": 0.1})
    assert (atk.eps, other.eps, other.transfer.eps) == (0.3, 0.1, 0.1)


def test_bad_settings_are_refused_when_built() -> None:
    get = advlab.attacks.get
    with pytest.raises(ParameterError, match="no parameter 'attack'.*transfer_attack"):
        get("substitute", attack="pgd")  # the old name of transfer_attack
    with pytest.raises(UnknownNameError):
        get("substitute", transfer_attack="pgdd")
    with pytest.raises(ParameterError, match="no parameter 'stepz'"):
        get("substitute", transfer_attack="pgd", transfer_kwargs={"stepz": 3})
    with pytest.raises(ThreatModelError, match="one width per substitute arch"):
        get("substitute", arch=("mlp", "cnn"), width=(8, 8, 8))
    with pytest.raises(ThreatModelError, match="unknown substitute arch 'rnn'"):
        get("substitute", arch="rnn")
    with pytest.raises(ThreatModelError, match="lr must be positive"):
        get("substitute", lr=0.0)
    with pytest.raises(ThreatModelError, match="rounds must be non-negative"):
        get("substitute", rounds=-1)
    with pytest.raises(InputError, match="seed_x must have shape"):
        get("substitute", seed_x=torch.rand(2, 8, 8))


@pytest.mark.slow
def test_substitute_beats_noise(mlp, mnist_test, mnist_train) -> None:
    x, y = mnist_test
    xt, _ = mnist_train
    atk = advlab.attacks.get("substitute", seed_x=xt[:100], rounds=1, epochs=5, arch="mlp",
                             width=16, weight_decay=1e-3)
    res = atk(mlp, x[:200], y[:200])
    assert res.info["oracle_labels"] == 200
    g = torch.Generator().manual_seed(0)
    noise = (x[:200] + 0.3 * (torch.randint(0, 2, x[:200].shape, generator=g) * 2 - 1)).clamp(0, 1)
    with torch.no_grad():
        base = (mlp(noise).argmax(1) != y[:200]).float().mean().item()
    assert res.success_rate > base + 0.2
