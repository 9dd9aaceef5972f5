"""Bandits-TD (attacks/blackbox/bandits.py): its two-query estimate against the closed form,
and the prior following the tiled gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from advlab.attacks.blackbox.bandits import Bandits
from testkit import Linear, cos, images, session, true_grad


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

