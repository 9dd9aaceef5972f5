"""AutoZOOM's reduced space and autoencoder: the resolutions it climbs, the map D from the
search variables to the perturbation (D(0) = 0, bilinear upsampling keeps constants), and a
seeded autoencoder that learns to reconstruct."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advlab.attacks.blackbox.autozoom import Autoencoder, AutoZOOM, train_autoencoder
from advlab.errors import ThreatModelError


def test_levels_climb_to_the_full_image() -> None:
    assert AutoZOOM(reduced=0.5)._levels(28, 28) == [(14, 14), (28, 28)]
    assert AutoZOOM(reduced=0.25)._levels(28, 20) == [(7, 5), (14, 10), (28, 20)]
    assert AutoZOOM(reduced=0.5, dim_patience=None)._levels(28, 28) == [(14, 14)]
    assert AutoZOOM(reduced=1.0)._levels(8, 8) == [(8, 8)]
    ae = Autoencoder((1, 28, 28))
    assert ae.latent_shape == (4, 7, 7)
    assert AutoZOOM(autoencoder=ae)._levels(28, 28) == [(7, 7)]  # one level: the latent


def test_decode_maps_zero_to_zero_and_keeps_constants() -> None:
    shape = torch.Size([2, 1, 8, 8])
    bilinear = AutoZOOM()
    z = torch.full((2, 1, 4, 4), 0.3)
    torch.testing.assert_close(bilinear._decode(z, shape), torch.full(tuple(shape), 0.3))
    z = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(bilinear._decode(z, shape), z)  # the full resolution is the identity
    ae = Autoencoder((1, 8, 8)).eval()
    coded = AutoZOOM(autoencoder=ae)
    latent = torch.zeros(2, *ae.latent_shape)
    assert torch.equal(coded._decode(latent, shape), torch.zeros(tuple(shape)))
    latent[1] = 1.0
    with torch.no_grad():
        want = ae.decode(latent[1:]) - ae.decode(latent[:1])
    torch.testing.assert_close(coded._decode(latent, shape)[1:], want)


def test_train_autoencoder_is_seeded_and_reconstructs() -> None:
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(64, 1, 1, 1, generator=g) * torch.ones(64, 1, 8, 8)).contiguous()
    state = torch.get_rng_state()
    a = train_autoencoder(x, epochs=30, batch_size=16, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    b = train_autoencoder(x, epochs=30, batch_size=16, seed=3)
    assert not a.training
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    untrained = train_autoencoder(x, epochs=1, batch_size=64, lr=1e-9, seed=3)
    with torch.no_grad():
        assert F.mse_loss(a(x), x) < 0.5 * F.mse_loss(untrained(x), x)  # 0.21 on torch 2.13


def test_bad_settings() -> None:
    for kwargs in ({"max_queries": 1}, {"q_post": 0}, {"reduced": 0.0}, {"lr": 0.0},
                   {"kappa": -1.0}, {"dim_patience": 0}):
        with pytest.raises(ThreatModelError):
            AutoZOOM(**kwargs)
    with pytest.raises(ThreatModelError, match="lr > 0"):
        train_autoencoder(torch.rand(4, 1, 8, 8), lr=0.0)
