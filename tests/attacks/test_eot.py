"""EOT: the gradient is exactly the average of per-sample gradients, the wrapper keeps the
wrapped attack's loop and settings, and EOT examples survive transformations."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advlab
from advlab import transforms as T
from advlab.attacks import APGD, MIFGSM, PGD
from advlab.attacks.eot import EOT, EOTPGD, eot, survival
from advlab.attacks.gradient import AUTOGRAD, Probe
from advlab.errors import AttackError, ThreatModelError


class Linear(nn.Module):
    def __init__(self, k: int = 5, d: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(k, d, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(k, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = 0.3 + 0.4 * torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 5, (n,), generator=g)


def test_eot_gradient_closed_form_under_brightness() -> None:
    # T(x) = x + b with b ~ U[-0.1, 0.1] (no clipping for x in [0.3, 0.7]); for a linear model
    # d CE(W T(x) + c, y) / dx = W^T (softmax(W (x + b) + c) - e_y); EOT averages over draws
    model, (x, y), s = Linear().eval(), data(), 7
    atk = EOTPGD(eps=0.1, transform=T.Brightness(max_delta=0.1), samples=s)
    grad, logits = atk.source(atk.objective, Probe(model, torch.Generator().manual_seed(5)), x,
                              y, None, None)
    b = T.Brightness(max_delta=0.1).sample(x.repeat(s, 1, 1, 1), torch.Generator().manual_seed(5))
    b = b.view(s, len(x), 1, 1, 1)
    want = torch.zeros_like(x)
    z_mean = torch.zeros(len(x), 5, dtype=x.dtype)
    for k in range(s):
        z = model(x + b[k]).detach()
        p = F.softmax(z, 1) - F.one_hot(y, 5).to(x.dtype)
        want += (p @ model.w.detach()).view_as(x) / s
        z_mean += z / s
    torch.testing.assert_close(grad, want)
    torch.testing.assert_close(logits, z_mean)


def test_batched_eot_equals_the_per_sample_loop() -> None:
    # a composed distribution, non-linear, with a non-differentiable member through BPDA
    model, (x, y), s = Linear().eval(), data(), 5
    dist = T.Compose([T.Rotate(max_angle=20.0), T.GaussianNoise(0.05), T.BitDepth(5)])
    atk = EOTPGD(eps=0.1, transform=dist, samples=s)
    t = (y + 1) % 5
    grad, _ = atk.source(atk.objective, Probe(model, torch.Generator().manual_seed(9)), x, y,
                         t, None)
    g = torch.Generator().manual_seed(9)
    rows = x.repeat(s, 1, 1, 1)
    angle = dist.transforms[0].sample(rows, g)
    noise = dist.transforms[1].sample(rows, g)
    want = torch.zeros_like(x)
    for k in range(s):
        sl = slice(k * len(x), (k + 1) * len(x))
        xa = x.clone().requires_grad_(True)
        xt = dist.transforms[0].apply(xa, angle[sl])
        xt = dist.transforms[1].apply(xt, noise[sl])
        xt = T.BPDA(dist.transforms[2])(xt)
        loss = -F.cross_entropy(model(xt), t, reduction="sum")  # targeted: CE of t, descended
        want += torch.autograd.grad(loss, xa)[0] / s
    torch.testing.assert_close(grad, want)


def test_wrapper_keeps_the_attack_and_its_settings() -> None:
    base = MIFGSM(eps=0.2, steps=7, decay=0.5, seed=4)
    wrapped = eot(base, {"translate": 1}, samples=3)
    assert type(wrapped) is MIFGSM and isinstance(wrapped.source, EOT)
    assert (wrapped.eps, wrapped.steps, wrapped.decay, wrapped.seed) == (0.2, 7, 0.5, 4)
    assert base.source is AUTOGRAD, "the wrapped attack must stay untouched"
    assert isinstance(eot(APGD(eps=0.1)).source, EOT)
    with pytest.raises(AttackError):
        eot(wrapped)
    with pytest.raises(AttackError):
        eot(advlab.attacks.get("universal"))
    with pytest.raises(ThreatModelError):
        EOTPGD(samples=0)
    with pytest.raises(AttackError, match="generator"):
        wrapped.gradient(Linear().eval(), *data(), None)


def test_one_sample_of_the_identity_is_plain_pgd() -> None:
    model, (x, y) = Linear().eval(), data()
    ident = T.Translate(0, 0)  # a fixed map: the identity
    a = EOTPGD(eps=0.1, transform=ident, samples=1, steps=5, early_stop=True)(model, x, y)
    b = PGD(eps=0.1, steps=5)(model, x, y)
    torch.testing.assert_close(a.x_adv, b.x_adv)


@pytest.mark.slow
def test_eot_examples_survive_transformations(mnist_test, cnn) -> None:
    x, y = mnist_test
    x, y = x[:20], y[:20]
    plain = PGD(eps=0.3, steps=30)(cnn, x, y)
    robust = EOTPGD(eps=0.3, steps=30, samples=6)(cnn, x, y)
    assert plain.success.all() and robust.success.float().mean() >= 0.9
    s_plain = survival(cnn, plain.x_adv, samples=20, seed=1).mean()
    s_eot = survival(cnn, robust.x_adv[robust.success], samples=20, seed=1).mean()
    assert s_eot > 0.7 and s_eot > s_plain + 0.4, (s_eot, s_plain)  # measured 0.84 vs 0.22
