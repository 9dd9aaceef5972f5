"""The learned detectors' binary classifier (detectors/learned.py): separates and is seeded."""
from __future__ import annotations

import torch

from advlab.detectors.learned import train_binary


def test_train_binary_separates_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(50, 3, generator=g), torch.randn(30, 3, generator=g) + 4.0
    clf = train_binary(clean, adv, epochs=100, seed=1)
    assert (clf(clean) < 0).all() and (clf(adv) > 0).all()
    again = train_binary(clean, adv, epochs=100, seed=1)
    assert torch.equal(clf(clean), again(clean))
    assert not any(p.requires_grad for p in clf.parameters())
