"""The attack contract, over every registered attack (design.md, style.md).

Shape/dtype/device kept, output in [0, 1], norm <= eps for every example with mixed
per-example eps, ``success`` equal to re-running the model, eps=0 returns x, the model's
mode/parameters/.grad/buffers, the caller's tensors and the global RNG unchanged, and the
same seed giving the same output.
"""
from __future__ import annotations

import copy

import pytest
import torch

import advlab
from advlab.threat import lp_norm
from testkit import assert_same_state, model_state

NAMES = sorted(advlab.attacks.available())
X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 3, 4, 5])


def test_registry_is_not_empty() -> None:
    assert {"fgsm", "bim", "pgd", "mifgsm"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str, tiny_factory) -> None:
    taxonomy = advlab.attacks.available()[name]
    attack = advlab.attacks.get(name)
    model = tiny_factory()
    before = model_state(model)
    x, y = X.clone(), Y.clone()
    rng = torch.get_rng_state()
    res = attack(model, x, y)
    assert torch.equal(rng, torch.get_rng_state()), "global RNG touched"
    assert torch.equal(x, X) and torch.equal(y, Y), "caller's tensors changed"
    assert_same_state(before, model_state(model))

    xa = res.x_adv
    assert xa.shape == X.shape and xa.dtype == X.dtype and xa.device == X.device
    assert xa.min() >= 0 and xa.max() <= 1 and not xa.requires_grad
    with torch.no_grad():
        pred = model(xa).argmax(1)
    want = pred != Y if res.target is None else pred == res.target
    assert torch.equal(res.success, want), "success disagrees with re-running the model"
    torch.testing.assert_close(res.norms["l2"], lp_norm(xa - X, "l2"))
    if taxonomy.knowledge == "white":
        assert res.queries is None
    else:
        assert res.queries is not None and res.queries.shape == (len(X),)
        assert res.queries.dtype == torch.int64 and (res.queries >= 0).all()

    again = advlab.attacks.get(name)(copy.deepcopy(model), X, Y)
    assert torch.equal(again.x_adv, xa), "same seed, different output"


@pytest.mark.parametrize("name", [n for n in NAMES if advlab.attacks.available()[n].bounded])
def test_per_example_eps(name: str, tiny_factory) -> None:
    attack = advlab.attacks.get(name)
    eps = torch.tensor([0.0, 0.05, 0.3, 0.0, 0.1, 0.2]) * \
        {"linf": 1.0, "l2": 10.0, "l1": 40.0}.get(attack.norm, 1.0)
    res = attack(tiny_factory(), X, Y, eps=eps)
    norms = lp_norm(res.x_adv - X, attack.norm)
    assert (norms <= eps * (1 + 1e-5) + 1e-6).all(), (norms, eps)
    zero = eps == 0
    assert torch.equal(res.x_adv[zero], X[zero]), "eps=0 must return x"


@pytest.mark.parametrize("name", NAMES)
def test_targeted_success_means_target(name: str, tiny_factory) -> None:
    if advlab.attacks.available()[name].goal == "untargeted":
        pytest.skip("untargeted only")
    target = (Y + 3) % 10
    res = advlab.attacks.get(name)(tiny_factory(), X, Y, target=target)
    assert torch.equal(res.target, target)
    with torch.no_grad():
        pred = tiny_factory()(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
