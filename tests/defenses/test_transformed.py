"""The input-transformation defense and its BPDA + EOT attack surface."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advlab import attacks, defenses
from advlab.errors import InputError


def test_forward_is_model_of_transformed_input(plain_net, digits, guard):
    x = digits[2][:20]
    check = guard(plain_net)
    d = defenses.Transformed(plain_net, [defenses.Translate(1, 0), defenses.BitDepth(2)])
    out = d(x)
    check()
    with torch.no_grad():
        ref = plain_net(defenses.BitDepth(2)(defenses.Translate(1, 0)(x)))
    assert torch.equal(out.detach(), ref)
    assert not d.random and not d.differentiable


def test_random_defense_draws_from_its_own_generator(plain_net, digits):
    x = digits[2][:20]
    d = defenses.Transformed(plain_net, defenses.GaussianNoise(0.2), seed=3)
    with torch.no_grad():
        a, b = d(x), d(x)
        d.reset()
        assert torch.equal(d(x), a) and not torch.equal(a, b)  # random, yet replayable
        g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        assert torch.equal(d(x, g1), d(x, g2))
    state = torch.get_rng_state()
    with torch.no_grad():
        d(x)
    assert torch.equal(torch.get_rng_state(), state)


def test_adaptive_surface_bpda_gradient(plain_net, digits):
    x, y = digits[2][:30], digits[3][:30]
    d = defenses.Transformed(plain_net, [defenses.BitDepth(2)])
    adv = d.adaptive()
    assert adv.eot_samples == 1 and adv.attack == "pgd" and adv.model.bpda
    xg = x.clone().requires_grad_(True)
    out = adv.model(xg)
    with torch.no_grad():
        assert torch.equal(out, d(x))  # the surrogate's forward values are the defense's
    (g,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), xg)
    z = defenses.BitDepth(2)(x).requires_grad_(True)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(plain_net(z), y, reduction="sum"), z)
    torch.testing.assert_close(g, g_ref)  # identity backward through the bit-depth reduction
    # the naive gradient is exactly zero: rounding masks it
    (g_naive,) = torch.autograd.grad(F.cross_entropy(d(xg), y, reduction="sum"), xg)
    assert g_naive.abs().max() == 0


def test_random_defense_adaptive_uses_eot():
    d = defenses.Transformed(torch.nn.Flatten(), defenses.Translate(max_shift=2),
                             eot_samples=12)
    adv = d.adaptive()
    assert adv.eot_samples == 12 and adv.attack_kwargs["samples"] == 12
    with pytest.raises(InputError):
        defenses.Transformed(torch.nn.Flatten(), [])


@pytest.mark.slow
def test_bpda_breaks_what_naive_pgd_cannot(plain_net, digits, guard):
    x, y = digits[2][:150], digits[3][:150]
    d = defenses.Transformed(plain_net, [defenses.BitDepth(2)])
    check = guard(plain_net)
    pgd = attacks.PGD(0.3, steps=20)
    naive = 1 - pgd(d, x, y).success.float().mean().item()
    x_adv = pgd(d.adaptive().model, x, y).x_adv
    with torch.no_grad():
        adaptive = (d(x_adv).argmax(1) == y).float().mean().item()
    check()
    assert naive > 0.5 and adaptive < 0.1
