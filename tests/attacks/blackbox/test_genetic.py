"""GenAttack: strength on the zoo CNN within its L-inf budget."""
from __future__ import annotations

import pytest

import advlab


@pytest.mark.slow
def test_genattack_on_cnn(cnn, mnist_test) -> None:
    x, y = mnist_test
    res = advlab.attacks.get("genattack", max_queries=600)(cnn, x[:6], y[:6])
    assert res.success_rate >= 0.66
    assert res.norms["linf"].max() <= 0.3 + 1e-6
