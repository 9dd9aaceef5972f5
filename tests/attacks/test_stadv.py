"""stAdv: the bilinear warp and the flow loss against hand computations, the zero flow is the
identity, and the zoo CNN falls to smooth flows."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import advlab
from advlab.attacks.stadv import StAdv, flow_loss, warp

G = torch.Generator().manual_seed(0)


def bilinear(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """x_adv(p) = sum_q x(q) (1 - |u'-u_q|)(1 - |v'-v_q|), coordinates clamped to the image."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            u = min(max(i + flow[0, i, j], 0), h - 1)
            v = min(max(j + flow[1, i, j], 0), w - 1)
            for qu in {math.floor(u), min(math.floor(u) + 1, h - 1)}:
                for qv in {math.floor(v), min(math.floor(v) + 1, w - 1)}:
                    out[:, i, j] += img[:, qu, qv] * (1 - abs(u - qu)) * (1 - abs(v - qv))
    return out


def test_zero_flow_is_the_identity() -> None:
    x = torch.rand(3, 2, 5, 7, generator=G, dtype=torch.float64)
    torch.testing.assert_close(warp(x, torch.zeros(3, 2, 5, 7, dtype=torch.float64)), x)


def test_warp_matches_bilinear_by_hand() -> None:
    x = torch.rand(2, 3, 5, 6, generator=G, dtype=torch.float64)
    flow = (torch.rand(2, 2, 5, 6, generator=G, dtype=torch.float64) - 0.5) * 4
    out = warp(x, flow)
    for k in range(2):
        np.testing.assert_allclose(out[k].numpy(), bilinear(x[k].numpy(), flow[k].numpy()),
                                   atol=1e-12)


def test_integer_flow_moves_pixels() -> None:
    x = torch.rand(1, 1, 4, 5, generator=G, dtype=torch.float64)
    flow = torch.zeros(1, 2, 4, 5, dtype=torch.float64)
    flow[:, 1] = 1.0  # each pixel takes its right neighbour's value (last column repeats)
    want = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)
    torch.testing.assert_close(warp(x, flow), want)


def test_flow_loss_matches_the_neighbourhood_sum() -> None:
    flow = torch.randn(2, 2, 4, 3, generator=G, dtype=torch.float64)
    f = flow.numpy()
    for k in range(2):
        want = 0.0
        for i in range(4):
            for j in range(3):
                for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    a, b = i + di, j + dj
                    if 0 <= a < 4 and 0 <= b < 3:
                        want += math.sqrt(((f[k, :, i, j] - f[k, :, a, b]) ** 2).sum() + 1e-8)
        assert flow_loss(flow)[k].item() == pytest.approx(want, rel=1e-12)


def test_constant_flow_costs_only_eps() -> None:
    flow = torch.full((1, 2, 4, 3), 0.7, dtype=torch.float64)
    pairs = 4 * 2 + 3 * 3  # horizontal + vertical neighbouring pairs
    assert flow_loss(flow).item() == pytest.approx(2 * pairs * 1e-4)


def test_output_is_a_convex_combination_of_pixels(tiny) -> None:
    x = torch.rand(4, 1, 8, 8, generator=G)
    res = StAdv(steps=20)(tiny, x, torch.arange(4))  # 3 values of tau
    assert (res.x_adv >= x.amin((1, 2, 3), keepdim=True) - 1e-6).all()
    assert (res.x_adv <= x.amax((1, 2, 3), keepdim=True) + 1e-6).all()
    fooled = res.info["flow_loss"].isfinite()
    assert torch.equal(fooled, res.success)
    assert torch.equal(res.x_adv[~fooled], x[~fooled])


def test_bad_input(tiny) -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        StAdv(tau=0)
    with pytest.raises(advlab.errors.ThreatModelError):
        StAdv(search_steps=0)
    with pytest.raises(advlab.errors.InputError):
        StAdv()(tiny, torch.rand(2, 1, 1, 8), torch.arange(2))


@pytest.mark.slow
def test_cnn_falls_to_smooth_flows(cnn, mnist_test) -> None:
    """Xiao et al. fool their MNIST CNNs on 99.95-100% of images; the search over tau does
    on the correctly classified ones here, where the paper's fixed tau = 0.05 reaches about
    90% (benchmarks/spatial.py, stadv section); a do-nothing attack gets 0%."""
    x, y = mnist_test[0][:20], mnist_test[1][:20]
    ok = cnn(x).argmax(1) == y
    res = StAdv()(cnn, x[ok], y[ok])
    assert res.success_rate >= 0.95
    assert res.info["flow_loss"][res.success].median() < 200
