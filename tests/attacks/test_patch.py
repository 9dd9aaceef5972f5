"""Adversarial patch: pasting is exact and confined to the mask, placements keep the whole
patch inside the image, and a trained patch beats a random one on held-out images."""
from __future__ import annotations

import pytest
import torch

import advlab
from advlab.attacks.patch import AdversarialPatch, paste, patch_mask, random_placements
from advlab.errors import LabelError, ThreatModelError


def test_identity_placement_pastes_the_patch_at_the_centre() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 12, generator=g)
    patch = torch.rand(3, 4, 4, generator=g)
    mask = patch_mask(4, "circle", x)
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    xa, m = paste(x, patch, mask, theta)
    want = x.clone()
    inside = mask[0].bool()
    for i in range(2):
        region = want[i, :, 4:8, 4:8]
        region[:, inside] = patch[:, inside]
    torch.testing.assert_close(xa, want)
    assert torch.equal(m[:, 0, 4:8, 4:8], mask.expand(2, 4, 4))
    torch.testing.assert_close(m.sum(), 2 * mask.sum())
    assert mask.sum() == 12  # the disc of a 4 x 4 patch: all but the 4 corners


def test_placements_keep_the_whole_patch_inside() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(200, 1, 28, 28)
    theta = random_placements(200, 10, (28, 28), (0.8, 1.2), 22.5, g, x)
    scale = theta[:, :, :2].det().rsqrt()  # the grid maps output -> patch, so det = 1 / s^2
    assert scale.min() >= 0.8 - 1e-5 and scale.max() <= 1.2 + 1e-5
    _, m = paste(x, torch.ones(1, 10, 10), torch.ones(1, 10, 10), theta)
    area = m.flatten(1).sum(1)
    torch.testing.assert_close(area, 100 * scale ** 2, rtol=0.02, atol=0.5)  # nothing cut off


def test_attack_output_is_confined_to_the_mask(mnist_test, mlp) -> None:
    x, y = mnist_test[0][:16], mnist_test[1][:16]
    res = advlab.attacks.get("patch", steps=10)(mlp, x, y)
    m = res.info["mask"]
    assert m.shape == (16, 1, 28, 28) and (m.flatten(1).sum(1) > 10).all()
    outside = (m == 0).expand_as(x)
    assert torch.equal(res.x_adv[outside], x[outside])
    assert (res.x_adv != x)[~outside].any()
    assert res.target is not None and not (res.target == y).any()
    torch.testing.assert_close(res.norms["l0"], ((res.x_adv - x).abs() > 1e-7).flatten(1)
                               .sum(1).float())


def test_trained_patch_beats_a_random_patch(mnist_train, mnist_test, mlp) -> None:
    atk = AdversarialPatch(steps=100)
    fitted = atk.fit(mlp, mnist_train[0][:500], target=3)
    x, y = mnist_test
    x = x[y != 3][:300]
    theta = atk.placements(x, torch.Generator().manual_seed(1))
    random = torch.rand(fitted.patch.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hit = (mlp(paste(x, fitted.patch, fitted.mask, theta)[0]).argmax(1) == 3).float().mean()
        base = (mlp(paste(x, random, fitted.mask, theta)[0]).argmax(1) == 3).float().mean()
    assert hit > base + 0.2, (hit, base)  # measured: 0.39 vs 0.07


def test_bad_settings_and_targets(mlp) -> None:
    with pytest.raises(ThreatModelError):
        AdversarialPatch(shape="star")
    with pytest.raises(ThreatModelError):
        AdversarialPatch(size=0.0)
    with pytest.raises(LabelError):
        AdversarialPatch(steps=1).fit(mlp, torch.rand(2, 1, 28, 28), target=10)
