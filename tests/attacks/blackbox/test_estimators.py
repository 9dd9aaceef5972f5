"""Gradient estimators against autograd, on models whose gradients are known exactly.

NES must be unbiased with the right scale (foolbox's evolution-strategies gradient is 4x too
small: a cosine test alone would not see it). Bandits' two-query estimate, ZOO's symmetric
differences and Newton's second differences are checked against closed forms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advlab.attacks.blackbox import Oracle
from advlab.attacks.blackbox.bandits import Bandits
from advlab.attacks.blackbox.estimate import OracleProbe
from advlab.attacks.blackbox.nes import NES
from advlab.attacks.blackbox.zoo_attack import ZOO
from advlab.attacks.minnorm import ScoreRun, cw_margin
from testkit import Linear


class Quadratic(nn.Module):
    """Two logits: z0 = 10 + a.x + x^T Q x / 2 (Q positive definite), z1 = 0; float64. Class
    0 wins on the test images, so the untargeted margin is z0 - z1 and smooth."""

    def __init__(self, d: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(d, generator=g, dtype=torch.float64)
        m = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.1
        self.a = nn.Parameter(a)
        self.q = nn.Parameter(m @ m.T + torch.diag(torch.rand(d, generator=g,
                                                             dtype=torch.float64) + 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1)
        z0 = 10 + v @ self.a + 0.5 * ((v @ self.q) * v).sum(1)
        return torch.stack([z0, torch.zeros_like(z0)], 1)


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) * 0.6 + 0.2


def true_grad(objective, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(model(xr), y, None).sum(), xr)
    return g


def session(model: nn.Module | Oracle, n: int, seed: int = 0) -> OracleProbe:
    """The probe an estimator prepares for a batch of n (an unlimited oracle by default)."""
    oracle = model if isinstance(model, Oracle) else Oracle(model)
    oracle.reset(n)
    return OracleProbe(oracle, torch.Generator().manual_seed(seed))


def estimate(atk, probe: OracleProbe, x: torch.Tensor, y: torch.Tensor):  # noqa: ANN001, ANN201
    """The attack's estimated gradient (and scores) at x, as its loop gets it."""
    return atk.source(atk.objective, probe, x, y, None, None)


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def scale(est: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Projection of the estimate on the true gradient, in units of the true gradient."""
    return (est * true).flatten(1).sum(1) / true.flatten(1).pow(2).sum(1)


def test_nes_matches_autograd_with_the_right_scale_linear() -> None:
    model = Linear(16, 5).eval()
    x = images()
    with torch.no_grad():
        y = model(x).argmax(1)  # not yet adversarial: the estimator runs
    atk = NES(0.3, sigma=1e-3, n_samples=20_000, loss="margin", max_queries=None, steps=1)
    s = session(model, len(x))
    est, logits = estimate(atk, s, x, y)
    true = true_grad(atk.objective, model, x, y)
    torch.testing.assert_close(logits, model(x).detach())
    assert (cos(est, true) > 0.99).all(), cos(est, true)
    assert ((scale(est, true) - 1).abs() < 0.05).all(), scale(est, true)
    assert torch.equal(s.oracle.counts, torch.full((4,), 1 + 20_000))


def test_nes_matches_autograd_on_a_quadratic_with_cross_entropy() -> None:
    model = Quadratic(16).eval()
    x = images(seed=1)
    y = torch.zeros(4, dtype=torch.int64)
    with torch.no_grad():
        keep = model(x).argmax(1) == 0
    assert keep.all()
    atk = NES(0.3, sigma=1e-3, n_samples=20_000, loss="ce", max_queries=None, steps=1)
    est, _ = estimate(atk, session(model, len(x)), x, y)
    true = true_grad(atk.objective, model, x, y)
    assert (cos(est, true) > 0.95).all(), cos(est, true)
    assert ((scale(est, true) - 1).abs() < 0.1).all(), scale(est, true)


def test_nes_antithetic_pair_is_exact_on_a_quadratic() -> None:
    """For a quadratic J, J(x + s u) - J(x - s u) = 2 s u.grad J exactly: one pair gives
    (u.g) u, whatever sigma."""
    model = Quadratic(16).eval()
    x, y = images(1, seed=2), torch.zeros(1, dtype=torch.int64)
    atk = NES(0.3, sigma=0.05, n_samples=2, loss="margin", max_queries=None, steps=1)
    s = session(model, 1, seed=7)
    est, _ = estimate(atk, s, x, y)
    u = torch.randn((1, 1, *x.shape[1:]), generator=torch.Generator().manual_seed(7),
                    dtype=x.dtype)[:, 0]
    g = true_grad(atk.objective, model, x, y)
    torch.testing.assert_close(est, (u * g).sum() * u)


def test_nes_budget_limits_pairs() -> None:
    """With 7 queries left: 1 success check, 1 kept in reserve, 2 pairs (4 queries)."""
    model = Linear(16, 5).eval()
    x = images(2)
    with torch.no_grad():
        y = model(x).argmax(1)
    atk = NES(0.3, n_samples=50, max_queries=7, steps=1)
    s = session(Oracle(model, max_queries=7), 2)
    estimate(atk, s, x, y)
    assert torch.equal(s.oracle.counts, torch.tensor([5, 5]))


def test_bandits_two_query_estimate_closed_form() -> None:
    """On a two-class linear model J is linear, so with prior v = 0 the estimate is
    Delta = 2 (grad J . up(u)) / (delta |up(u)|) u, u = delta N(0, I) / sqrt(d)."""
    model = Linear(16, 2).eval()
    x = images(3)
    with torch.no_grad():
        y = model(x).argmax(1)
    atk = Bandits(0.3, norm="l2", fd_eta=0.1, exploration=0.5, tile=2, loss="margin",
                  max_queries=None, steps=1)
    v = torch.zeros(3, 1, 2, 2, dtype=x.dtype)
    s = session(model, 3, seed=11)
    delta = atk.source.prior_gradient(atk.objective, s, x, y, None, torch.arange(3), v)
    u = 0.5 * torch.randn(v.shape, generator=torch.Generator().manual_seed(11),
                          dtype=x.dtype) / 2.0
    up = F.interpolate(u, size=(4, 4), mode="nearest")
    g = true_grad(atk.objective, model, x, y)
    want = 2 * (g * up).flatten(1).sum(1) / (0.5 * up.flatten(1).norm(dim=1))
    torch.testing.assert_close(delta, want[:, None, None, None] * u)
    assert torch.equal(s.oracle.counts, torch.full((3,), 2))


def test_bandits_estimate_follows_the_tiled_gradient() -> None:
    """Averaged over draws, Delta points along dJ/dv = the gradient summed over each tile
    (the chain rule through the data prior's upsampling)."""
    model = Linear(16, 2).eval()
    x = images(1).expand(4000, -1, -1, -1).contiguous()
    with torch.no_grad():
        y = model(x).argmax(1)
    atk = Bandits(0.3, norm="l2", tile=2, loss="margin", max_queries=None, steps=1)
    v = torch.zeros(len(x), 1, 2, 2, dtype=x.dtype)
    delta = atk.source.prior_gradient(atk.objective, session(model, len(x)), x, y, None,
                                      torch.arange(len(x)), v)
    g = true_grad(atk.objective, model, x[:1], y[:1])
    tiled = F.avg_pool2d(g, 2) * 4
    assert cos(delta.mean(0, keepdim=True), tiled).item() > 0.97


def zoo_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, atk: ZOO, const: float):
    """One ZOO iteration from w = 0 with every coordinate estimated; returns the state."""
    s = session(model, len(x))
    state = atk._fresh(x, x.shape[2], None)
    atk._iterate(_run(s.oracle, x, y, const), state, torch.arange(len(x)))
    return state, s.oracle.counts


def _run(oracle: Oracle, x: torch.Tensor, y: torch.Tensor, const: float) -> ScoreRun:
    return ScoreRun.start(oracle, x, y, None, const, torch.Generator().manual_seed(0),
                          torch.float64)


def test_zoo_symmetric_difference_matches_autograd() -> None:
    """ADAM's first moment after one step is (1 - beta1) g_hat: g_hat = c * df/dx at w = 0
    (the L2 term has zero gradient there), to finite-difference precision."""
    model = Quadratic(16).eval()
    x, y = images(2), torch.zeros(2, dtype=torch.int64)
    atk = ZOO(coords=16, h=1e-4, max_queries=None)
    state, counts = zoo_step(model, x, y, atk, const=3.0)
    xr = x.clone().requires_grad_(True)
    f = cw_margin(model(xr), y, None, atk.confidence, log_probs=True)
    (g,) = torch.autograd.grad(3.0 * f.sum(), xr)
    torch.testing.assert_close(state.adam.m / (1 - atk.beta1), g.flatten(1), rtol=1e-6,
                               atol=1e-7)
    assert torch.equal(counts, torch.full((2,), 2 * 16 + 1))


def test_zoo_newton_step_uses_the_second_difference() -> None:
    """Newton: w_i = -lr g_i / h_i with h_i = 2 + c Q_ii (the L2 term's curvature is 2),
    then kept in the box (x + w in [0, 1])."""
    model = Quadratic(16).eval()
    x, y = images(2, seed=3), torch.zeros(2, dtype=torch.int64)
    atk = ZOO(solver="newton", coords=16, h=1e-3, lr=1.0, max_queries=None)
    state, _ = zoo_step(model, x, y, atk, const=2.0)
    xr = x.clone().requires_grad_(True)
    f = cw_margin(model(xr), y, None, atk.confidence, log_probs=True)
    (g,) = torch.autograd.grad(2.0 * f.sum(), xr)
    hess = 2 + 2.0 * torch.diagonal(model.q.detach())
    want = (-g.flatten(1) / hess).clamp(-x.flatten(1), 1 - x.flatten(1))
    assert (want.abs() > 1e-3).all()
    torch.testing.assert_close(state.w.flatten(1), want, rtol=1e-5, atol=1e-8)


def test_zoo_partial_coordinates_and_budget() -> None:
    """Only the sampled coordinates move; 9 queries left buy 4 coordinates (2 each + 1)."""
    model = Linear(16, 2).eval()
    x = images(1)
    with torch.no_grad():
        y = model(x).argmax(1)
    atk = ZOO(coords=8, max_queries=9)
    oracle = Oracle(model, max_queries=9)
    oracle.reset(1)
    state = atk._fresh(x, 4, None)
    atk._iterate(_run(oracle, x, y, 1.0), state, torch.arange(1))
    assert int(oracle.counts) == 9
    assert int((state.w != 0).sum()) == 4
