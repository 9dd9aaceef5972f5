"""One-pixel attack: DE/rand/1 against its formula, crossover and bounds, the pixel encoding,
query counts, and the zoo MLP falling to a few pixels."""
from __future__ import annotations

import pytest
import torch

import advlab
from advlab.attacks.blackbox.onepixel import OnePixel, apply, bounds, donors, mutate
from testkit import Counted


def test_donors_are_distinct_and_not_the_member() -> None:
    r = donors(50, 6, torch.Generator().manual_seed(0), torch.device("cpu"))
    i = torch.arange(6).view(1, 6, 1)
    assert r.shape == (50, 6, 3) and not (r == i).any()
    assert (r[..., 0] != r[..., 1]).all() and (r[..., 1] != r[..., 2]).all()
    assert (r[..., 0] != r[..., 2]).all()


def test_rand1_mutation_without_crossover() -> None:
    hi = bounds(2, (3, 5, 7))
    pop = torch.rand(4, 8, len(hi), generator=torch.Generator().manual_seed(1)) * hi
    trial = mutate(pop, 0.5, 1.0, hi, torch.Generator().manual_seed(2))
    r = donors(4, 8, torch.Generator().manual_seed(2), torch.device("cpu"))
    k = torch.arange(4).view(4, 1)
    want = pop[k, r[..., 0]] + 0.5 * (pop[k, r[..., 1]] - pop[k, r[..., 2]])
    torch.testing.assert_close(trial, torch.minimum(want.clamp_min(0), hi))
    assert trial.shape == pop.shape and (trial >= 0).all() and (trial <= hi).all()


def test_crossover_zero_takes_exactly_one_mutant_coordinate() -> None:
    hi = bounds(1, (1, 28, 28))
    pop = torch.rand(3, 10, 3, generator=torch.Generator().manual_seed(3)) * hi
    trial = mutate(pop, 0.5, 0.0, hi * 100, torch.Generator().manual_seed(4))
    assert ((trial != pop).sum(2) == 1).all()


def test_bounds_and_apply() -> None:
    assert bounds(2, (3, 4, 5)).tolist() == [4, 5, 1, 1, 1] * 2
    x = torch.zeros(2, 1, 4, 5)
    out = apply(x, torch.tensor([[1.7, 4.99, 0.25], [4.0, 0.0, 1.0]]))
    assert out[0, 0, 1, 4] == 0.25 and out[1, 0, 3, 0] == 1.0  # floor, clamped to H - 1
    assert (out != 0).sum() == 2 and (x == 0).all()


def test_queries_are_the_population_per_generation(tiny) -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    counted = Counted(tiny).eval()
    res = OnePixel(popsize=8, steps=3)(counted, x, torch.arange(4))
    assert (res.queries % 8 == 0).all() and (res.queries <= 32).all()
    assert (res.queries[~res.success] == 32).all()
    assert counted.rows == int(res.queries.sum()) + len(x)  # + the base's success check
    assert (res.norms["l0"] <= 1).all()


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        OnePixel(popsize=3)
    with pytest.raises(advlab.errors.ThreatModelError):
        OnePixel(crossover=1.5)
    with pytest.raises(advlab.errors.ThreatModelError):
        OnePixel(strategy="best2")


@pytest.mark.slow
def test_mlp_falls_to_three_pixels(mlp, mnist_test) -> None:
    """MNIST needs more than one pixel: 3 pixels, 100 x 30 generations fool a few of the
    first 50 correctly classified images (8% measured; benchmarks/blackbox_score_sparse.py
    has the peers); a do-nothing attack fools none."""
    x, y = mnist_test
    ok = (mlp(x[:60]).argmax(1) == y[:60]).nonzero().squeeze(1)[:50]
    res = OnePixel(pixels=3)(mlp, x[ok], y[ok])
    assert res.success.sum() >= 2
    assert (res.norms["l0"] <= 3).all()


def test_best1_mutation_starts_from_the_fittest() -> None:
    hi = bounds(1, (1, 6, 6))
    pop = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(6)) * hi
    best = pop[:, 0]
    trial = mutate(pop, 0.5, 1.0, hi, torch.Generator().manual_seed(7), best)
    r = donors(2, 5, torch.Generator().manual_seed(7), torch.device("cpu"))
    k = torch.arange(2).view(2, 1)
    want = best[:, None] + 0.5 * (pop[k, r[..., 1]] - pop[k, r[..., 2]])
    torch.testing.assert_close(trial, torch.minimum(want.clamp_min(0), hi))
