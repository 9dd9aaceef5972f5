"""Spatial grid attack: integer shifts and quarter turns are exact pixel moves, the grid
runs mildest first from x itself, queries are one per candidate tried, and the zoo CNN falls
to small rotations and shifts."""
from __future__ import annotations

import pytest
import torch

import advlab
from advlab.attacks.blackbox.spatial import SpatialGrid, grid, rotate_translate
from testkit import Counted


def test_integer_shift_moves_the_pixels() -> None:
    x = torch.rand(2, 1, 6, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = rotate_translate(x, 0.0, 2.0, -1.0)  # content 2 right, 1 up
    want = torch.zeros_like(x)
    want[..., :-1, 2:] = x[..., 1:, :-2]
    torch.testing.assert_close(out, want)


def test_quarter_turn_is_rot90() -> None:
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = rotate_translate(x, 90.0, 0.0, 0.0)
    assert any(torch.allclose(out, torch.rot90(x, k, dims=(2, 3)), atol=1e-9) for k in (1, 3))
    torch.testing.assert_close(rotate_translate(x, 0.0, 0.0, 0.0), x)


def test_grid_is_mildest_first_from_the_identity() -> None:
    cands = grid(30.0, 3, 3.0, 3)
    assert len(cands) == 27 and cands[0] == (0.0, 0.0, 0.0)
    sizes = [abs(a) / 30 + (abs(dx) + abs(dy)) / 3 for a, dx, dy in cands]
    assert sizes == sorted(sizes)


def test_misclassified_examples_cost_one_query_and_stay(tiny) -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        wrong = (tiny(x).argmax(1) + 1) % 10
    res = SpatialGrid()(tiny, x, wrong)
    assert res.success.all() and torch.equal(res.x_adv, x)
    assert torch.equal(res.queries, torch.ones(4, dtype=torch.int64))


def test_queries_count_the_candidates_tried(tiny) -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(4)
    counted = Counted(tiny).eval()
    res = SpatialGrid(rotations=3, translations=3)(counted, x, y)
    assert res.queries.max() <= 27
    assert (res.queries[~res.success] == 27).all()
    assert counted.rows == int(res.queries.sum()) + len(x)  # + the base's success check


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        SpatialGrid(rotations=0)


def test_cnn_falls_to_small_transforms(cnn, mnist_test) -> None:
    """Engstrom et al.: a standard MNIST CNN is fooled on most images by rotations up to
    30 degrees and shifts up to 3 pixels; on 20 images all are (mildest-first grid)."""
    x, y = mnist_test[0][:20], mnist_test[1][:20]
    res = SpatialGrid(rotations=5, translations=5)(cnn, x, y)
    assert res.success_rate >= 0.9
