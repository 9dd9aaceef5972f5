"""The Boundary attack's geometry and bookkeeping: the orthogonal step stays on the sphere
around x through the current point, the source step shrinks that distance by the factor
(1 - source step), and the success-rate histories are per-example ring buffers."""
from __future__ import annotations

import math

import torch

import testkit
from advlab.attacks.blackbox.boundary import Boundary, History


def test_proposals_on_the_sphere_then_towards_x() -> None:
    """Away from the box's faces: ||x - orthogonal|| = ||x - cur|| (Pythagoras) at the angle
    atan(sph) from x - cur, and ||x - candidate|| = (1 - src) ||x - cur||."""
    x = testkit.interior(5)
    g = torch.Generator().manual_seed(1)
    cur = x + 0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    sph = torch.tensor([0.01, 0.05, 0.1, 0.2, 0.3], dtype=x.dtype)
    src = torch.tensor([0.01, 0.02, 0.05, 0.1, 0.5], dtype=x.dtype)
    cand, orth = Boundary().proposals(x, cur, sph, src, torch.Generator().manual_seed(0))
    dist = (x - cur).flatten(1).norm(dim=1)
    torch.testing.assert_close((x - orth).flatten(1).norm(dim=1), dist)
    torch.testing.assert_close((x - cand).flatten(1).norm(dim=1), (1 - src) * dist)
    # the angle between x - cur and x - orth is atan(sph)
    cos = ((x - cur).flatten(1) * (x - orth).flatten(1)).sum(1) / dist ** 2
    torch.testing.assert_close(cos, torch.tensor([math.cos(math.atan(s)) for s in sph.tolist()],
                                                 dtype=x.dtype))
    # the candidate lies on the segment from the orthogonal point to x, src * dist from it
    torch.testing.assert_close(cand, orth + src.view(-1, 1, 1, 1) * (x - orth))


def test_history_is_a_ring_buffer_per_example() -> None:
    h = History(2, 3, torch.zeros(1))
    assert torch.isnan(h.mean()).all() and not h.full().any()
    for v in (1.0, 0.0, 1.0):
        h.append(torch.tensor([0]), torch.tensor([v]))
    h.append(torch.tensor([1]), torch.tensor([1.0]))
    assert h.full().tolist() == [True, False]
    torch.testing.assert_close(h.mean(), torch.tensor([2 / 3, 1.0]))
    h.append(torch.tensor([0]), torch.tensor([0.0]))  # overwrites the oldest (1.0)
    torch.testing.assert_close(h.mean(), torch.tensor([1 / 3, 1.0]))
    h.clear(torch.tensor([0]))
    assert torch.isnan(h.mean()[0]) and h.mean()[1] == 1.0 and not h.full()[0]
