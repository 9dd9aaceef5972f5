"""The detectors' shared parts (detectors/detector.py): the Euclidean distance matrix against numpy,
with a finite gradient at distance zero."""
from __future__ import annotations

import numpy as np
import torch

from advlab.detectors.detector import euclidean


def test_euclidean_matches_numpy_and_has_a_zero_gradient_at_zero() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(9, 40, generator=g, dtype=torch.float64), torch.randn(7, 40, generator=g,
                                                                            dtype=torch.float64)
    b[3] = a[2]                                       # one pair at distance 0
    want = np.sqrt(((a.numpy()[:, None] - b.numpy()[None]) ** 2).sum(-1))
    ag = a.clone().requires_grad_()
    d = euclidean(ag, b)
    # the norm expansion's error at distance 0 is about sqrt(eps_64) |a| ~ 1e-7, and its exact
    # value depends on torch's matmul (exactly 0 on 2.13, 1.2e-7 on 2.2)
    np.testing.assert_allclose(d.detach().numpy(), want, atol=1e-6)
    (grad,) = torch.autograd.grad(d[2, 3] + d[0, 0], ag)
    # at distance 0 the gradient is finite and zero up to the same rounding (exactly 0 when
    # the expansion rounds to 0, as on torch 2.13; 5e-10 on 2.2)
    assert torch.isfinite(grad).all() and grad[2].abs().max() < 1e-6
    torch.testing.assert_close(grad[0], (a[0] - b[0]) / d[0, 0].detach())
