"""PixelDefend: causal masks, purification against a full-image reference, BPDA surface."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advlab import defenses
from advlab.defenses.pixeldefend import MaskedConv2d, PixelCNN, pixel_logits, purify, window
from advlab.errors import InputError


def _net(channels: int = 1, levels: int = 9, seed: int = 0) -> PixelCNN:
    g = torch.Generator().manual_seed(seed)
    net = PixelCNN(channels, levels=levels, hidden=6 * channels, layers=2, first_kernel=5)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net.eval()


@pytest.mark.parametrize("channels", [1, 3])
def test_output_sees_only_earlier_pixels(channels):
    net = _net(channels).double()
    x = torch.rand(8, channels, 5, 5, dtype=torch.float64, requires_grad=True)
    out = net(x)  # 8 x L x C x H x W; the gradient of the batch sum, summed over the batch
    order = torch.arange(25).view(5, 5)
    for i in range(5):
        for j in range(5):
            for c in range(channels):
                (g,) = torch.autograd.grad(out[:, :, c, i, j].sum(), x, retain_graph=True)
                g = g.abs().sum(0, keepdim=True)  # any example (ReLUs may be dead in one)
                allowed = torch.zeros(channels, 5, 5, dtype=torch.bool)
                allowed[:, order < 5 * i + j] = True
                allowed[:c, i, j] = True  # earlier channels of the same pixel
                assert g[0][~allowed].abs().max() == 0
                seen = [g[0, :c, i, j]] + ([g[0, :, i, j - 1]] if j else []) + \
                    ([g[0, :, i - 1, j]] if i else [])
                assert all(s.abs().sum() > 0 for s in seen if len(s))  # its causal neighbours


def _reference_purify(net: PixelCNN, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Algorithm 1 literally: the whole image through the network for every pixel."""
    L, out = net.levels, x.clone()
    grid = torch.arange(L, dtype=x.dtype)
    with torch.no_grad():
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                for c in range(x.shape[1]):
                    p = net(out)[:, :, c, i, j]
                    ok = (grid[None] - x[:, c, i, j, None] * (L - 1)).abs() <= eps * (L - 1) + 1e-4
                    ok |= grid[None] == torch.round(x[:, c, i, j, None] * (L - 1))
                    out[:, c, i, j] = p.masked_fill(~ok, float("-inf")).argmax(1) / (L - 1)
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_purify_matches_full_image_algorithm(channels):
    net = _net(channels)
    x = torch.rand(3, channels, 13, 12, generator=torch.Generator().manual_seed(1))
    out = purify(net, x, 0.25)
    torch.testing.assert_close(out, _reference_purify(net, x, 0.25), atol=0, rtol=0)
    assert (out - x).abs().max() <= 0.25 + 1e-6
    v = out * (net.levels - 1)
    assert torch.equal(v, torch.round(v))  # on the value grid


def test_window_and_pixel_logits():
    lo, hi = window(torch.tensor([0.0, 0.5, 1.0, 0.3]), 0.25, 9)  # levels k / 8
    assert lo.tolist() == [0, 2, 6, 1] and hi.tolist() == [2, 6, 8, 4]
    lo, hi = window(torch.tensor([0.3]), 0.0, 9)  # no level within 0 of 2.4 / 8: the nearest
    assert lo.tolist() == hi.tolist() == [2]
    net = _net(levels=9)
    x = torch.rand(2, 1, 14, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = net(x)
        for i, j in [(0, 0), (5, 3), (13, 11), (9, 0), (12, 6)]:  # on the receptive field only
            torch.testing.assert_close(pixel_logits(net, x, i, j, 0), full[:, :, 0, i, j])


def test_train_pixelcnn_learns_the_digits(digits):
    x_tr, x_te = digits[0], digits[2]
    net = defenses.train_pixelcnn(x_tr, levels=17, hidden=8, layers=2, first_kernel=3,
                                  epochs=3, lr=1e-2)
    # a model ignoring the context could at best reach the entropy of the pixel histogram
    counts = torch.bincount(torch.round(x_tr * 16).long().flatten(), minlength=17).double()
    p = counts[counts > 0] / counts.sum()
    marginal_bits = -(p * p.log2()).sum().item()  # about 3.0 bits
    with torch.no_grad():
        assert net.nll(x_te).mean() < marginal_bits - 0.4  # about 2.2: it uses the context
    assert not net.training


def test_pixeldefend_forward_naive_and_bpda_gradients(plain_net, digits, guard):
    x, y = digits[2][:10], digits[3][:10]
    pc = _net(levels=17)
    check = guard(plain_net)
    d = defenses.PixelDefend(plain_net, pc, eps_defend=0.2)
    xg = x.clone().requires_grad_(True)
    logits = d(xg)
    z = purify(pc, x, 0.2)
    with torch.no_grad():
        assert torch.equal(logits.detach(), plain_net(z))
    (g_naive,) = torch.autograd.grad(F.cross_entropy(logits, y), xg)
    assert g_naive.abs().max() == 0  # the arg-max masks the gradient
    adv = d.adaptive()
    assert adv.eot_samples == 1 and adv.attack == "pgd" and adv.attack_kwargs["loss"] == "margin"
    (g,) = torch.autograd.grad(F.cross_entropy(adv.model(xg), y), xg)
    zg = z.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(plain_net(zg), y), zg)
    torch.testing.assert_close(g, g_ref)  # BPDA: identity backward through the purifier
    check()


def test_bad_arguments():
    with pytest.raises(InputError):
        MaskedConv2d(1, 4, 4, "A")
    with pytest.raises(InputError):
        defenses.Purifier(_net(), eps_defend=2.0)
    with pytest.raises(InputError):
        defenses.PixelDefend(torch.nn.Flatten(), _net(), 0.1)(torch.rand(2, 3, 8, 8))
