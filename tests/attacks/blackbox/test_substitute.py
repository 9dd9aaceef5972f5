"""The substitute (Papernot et al.) attack: its oracle labels and its strength over noise."""
from __future__ import annotations

import pytest
import torch

import advlab
import testkit

X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def test_substitute_recommended_setting_labels() -> None:
    """The docstring's recommended setting (ensemble, 3 rounds) labels seeds x 2^3 points."""
    model = testkit.LabelCounter().eval()
    y = model.labels(X)
    atk = advlab.attacks.get("substitute", seed_x=X, rounds=3, arch=("mlp", "cnn"),
                             width=(50, 16), weight_decay=1e-3, epochs=1)
    res = atk(model, X, y)
    assert res.info["oracle_labels"] == len(X) * 2 ** 3 == int(res.queries.sum())


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
