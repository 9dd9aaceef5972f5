"""Sign-OPT on a linear model, where the boundary distance g(theta) is closed-form: every
probe's sign is the sign of the true directional derivative, the local search finds g to its
tolerance; query counts, and strength beside HopSkipJump on the zoo MLP."""
from __future__ import annotations

import pytest
import torch

import advlab
from advlab.attacks.blackbox.decision import Decision
from advlab.attacks.blackbox.oracle import Oracle
from advlab.attacks.blackbox.signopt import SignOPT, local_search, sign_grad, unit
from testkit import Counted, linear_setup


def setup(n: int = 32):  # noqa: ANN201
    """Decision on a linear model, directions towards the other class, and g in closed form:
    g(theta) = margin / (w . theta / ||theta||)."""
    model, x, y, margin, w = linear_setup(n)
    w_d = torch.where((y == 0)[:, None], w, -w)  # gradient of z_other - z_y
    g = torch.Generator().manual_seed(7)
    theta = unit((w_d + 0.5 * torch.randn(n, 16, generator=g, dtype=torch.float64))
                 .view(n, 1, 4, 4))
    oracle = Oracle(model, "labels")
    oracle.reset(n)

    def closed(t: torch.Tensor) -> torch.Tensor:
        flat = t.flatten(1)
        return margin * flat.norm(dim=1) / (w_d * flat).sum(1)
    return Decision(oracle, y, None), x, theta, closed


def test_each_probe_sign_is_the_directional_derivative_sign() -> None:
    decide, x, theta, closed = setup()
    assert (closed(theta) > 0).all() and (closed(theta) < 1.0).all()  # no clipping
    t = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(closed(t).sum(), t)
    owner = torch.arange(len(x))
    for seed in range(5):
        est = sign_grad(decide, x, theta, closed(theta), torch.full((len(x),), 1e-5), 1,
                        owner, torch.Generator().manual_seed(seed))
        dot = (est * grad).flatten(1).sum(1)
        clear = dot.abs() > 1e-3 * grad.flatten(1).norm(dim=1)
        assert clear.sum() >= len(x) // 2 and (dot[clear] > 0).all()


@pytest.mark.parametrize("scale", [0.8, 1.3])
def test_local_search_finds_g(scale: float) -> None:
    decide, x, theta, closed = setup(8)
    true = closed(theta)
    tol = torch.full_like(true, 1e-6)
    found = local_search(decide, x, theta, true * scale, tol, torch.arange(8), 10.0)
    assert (found >= true - 1e-12).all() and (found <= true + 1.01e-6).all()


def test_queries_within_budget_and_counted(tiny) -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = tiny(x).argmax(1)  # correctly classified: the attack has to work
    counted = Counted(tiny).eval()
    res = SignOPT(max_queries=300, q=20)(counted, x, y)
    assert (res.queries <= 300).all() and (res.queries > 100).all()
    assert counted.rows == int(res.queries.sum()) + len(x)  # + the base's success check


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        SignOPT(q=0)
    with pytest.raises(advlab.errors.ThreatModelError):
        SignOPT(init="nowhere")


def test_mlp_beside_hopskipjump(mlp, mnist_test) -> None:
    """1,000 label queries from the same batch starts: every image fooled, median L2 within
    1.3x of HopSkipJump's (benchmarks/blackbox_label_minnorm.py has ART's Sign-OPT and
    GeoDA)."""
    x, y = mnist_test[0][:12], mnist_test[1][:12]
    ok = mlp(x).argmax(1) == y
    x, y = x[ok], y[ok]
    res = SignOPT(max_queries=1000)(mlp, x, y)
    hsj = advlab.attacks.get("hopskipjump", max_queries=1000, init="auto")(mlp, x, y)
    assert res.success.all() and (res.queries <= 1000).all()
    start = advlab.attacks.get("hopskipjump", max_queries=1, init="auto")(mlp, x, y)
    assert res.norms["l2"].median() < 0.5 * start.norms["l2"].median()
    assert res.norms["l2"].median() <= 1.3 * hsj.norms["l2"].median()
