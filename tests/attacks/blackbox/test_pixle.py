"""Pixle: patches and destinations, the move keeps only the image's own values, queries are
one per candidate, and the zoo CNN falls within a few dozen queries."""
from __future__ import annotations

import pytest
import torch

import advlab
from advlab.attacks.blackbox.pixle import Pixle, move, patch_moves
from testkit import Counted


def test_patch_moves() -> None:
    g = torch.Generator().manual_seed(0)
    src, dst, valid = patch_moves(200, 6, 7, (2, 3, 1, 4), g, torch.device("cpu"))
    assert src.shape == dst.shape == valid.shape == (200, 12)
    for s, d, v in zip(src, dst, valid):
        assert len(set(d.tolist())) == 12 and 1 <= v.sum() <= 12
        rows, cols = s[v] // 7, s[v] % 7
        assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 3
        assert v.sum() == len(set(s[v].tolist()))


def test_move_by_hand() -> None:
    x = torch.arange(12.0).view(1, 1, 3, 4) / 12
    base = torch.zeros_like(x)
    src, dst = torch.tensor([[0, 5, 6]]), torch.tensor([[11, 2, 7]])
    out = move(x, base, src, dst, torch.tensor([[True, True, False]]))
    want = torch.zeros(12)
    want[11], want[2] = 0 / 12, 5 / 12
    torch.testing.assert_close(out.flatten(), want)
    assert (base == 0).all()


def test_only_values_of_x_and_one_query_per_candidate(tiny) -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    counted = Counted(tiny).eval()
    res = Pixle(restarts=3, iterations=4)(counted, x, torch.arange(4))
    for a, b in zip(res.x_adv, x):
        assert set(a.flatten().tolist()) <= set(b.flatten().tolist())
    assert (res.queries <= 13).all() and (res.queries[~res.success] == 13).all()
    assert counted.rows == int(res.queries.sum()) + len(x)


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        Pixle(patch_width=(3, 2))


def test_cnn_falls(cnn, mnist_test) -> None:
    """Default settings (20 x 10 candidates): all of the first correctly classified images
    fooled, median about 47 queries (benchmarks/blackbox_score_sparse.py); do-nothing fools none."""
    x, y = mnist_test[0][:20], mnist_test[1][:20]
    ok = cnn(x).argmax(1) == y
    res = Pixle()(cnn, x[ok], y[ok])
    assert res.success_rate >= 0.95
    assert res.queries.float().median() <= 120
