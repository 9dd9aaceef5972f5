"""JSMA: the saliency map of a linear model by hand, the pair search against brute force,
batching, the decrease variant, then strength on the zoo."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import advlab
from advlab.attacks import JSMA
from advlab.attacks.jsma import best_pairs, jacobian, pair_map, saliency_map, top_pair


class Linear(nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.zeros(len(w), dtype=w.dtype) if b is None else b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


W = torch.tensor([[1.0, -2.0, 0.5, 3.0],     # class 0
                  [-1.0, 1.0, 1.0, -2.0],    # class 1 (the target below)
                  [2.0, -1.0, -3.0, 0.0]],   # class 2
                 dtype=torch.float64)


def test_saliency_map_by_hand() -> None:
    """Target 1: alpha = W[1] = (-1, 1, 1, -2); beta = W[0] + W[2] = (3, -3, -2.5, 3).
    Pixel 0: alpha < 0 -> 0. Pixel 1: 1 * |-3| = 3. Pixel 2: 1 * |-2.5| = 2.5.
    Pixel 3: alpha < 0 -> 0."""
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64, requires_grad=True)
    logits = Linear(W)(x)
    alpha, beta = jacobian(x, logits, torch.tensor([1]), "logits")
    torch.testing.assert_close(alpha, W[1][None])
    torch.testing.assert_close(beta, (W[0] + W[2])[None])
    s = saliency_map(alpha, beta, torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(s, torch.tensor([[0.0, 3.0, 2.5, 0.0]], dtype=torch.float64))
    # decrease variant: keep alpha < 0 and beta > 0: pixel 0: 1 * 3, pixel 3: 2 * 3
    s = saliency_map(alpha, beta, torch.ones(1, 4, dtype=torch.bool), theta=-1.0)
    torch.testing.assert_close(s, torch.tensor([[3.0, 0.0, 0.0, 6.0]], dtype=torch.float64))


def brute_force(alpha: np.ndarray, beta: np.ndarray, domain: np.ndarray,
                theta: float) -> tuple[float, set]:
    """The paper's pair search by enumeration: best score and the set of optimal pairs."""
    s = 1.0 if theta > 0 else -1.0
    best, arg = 0.0, set()
    for p, q in itertools.combinations(np.flatnonzero(domain), 2):
        a, b = s * (alpha[p] + alpha[q]), s * (beta[p] + beta[q])
        if a > 0 and b < 0:
            v = a * -b
            if v > best + 1e-12:
                best, arg = v, {(p, q)}
            elif abs(v - best) <= 1e-12:
                arg.add((p, q))
    return best, arg


@pytest.mark.parametrize("theta", [1.0, -1.0])
def test_pair_search_matches_brute_force(theta: float) -> None:
    g = torch.Generator().manual_seed(0)
    n, m = 12, 9
    alpha = torch.randn(n, m, generator=g, dtype=torch.float64)
    beta = torch.randn(n, m, generator=g, dtype=torch.float64)
    domain = torch.rand(n, m, generator=g) < 0.8
    full = pair_map(alpha, beta, domain, theta)
    p, q, ok = best_pairs(alpha, beta, domain, theta)
    for i in range(n):
        want, pairs = brute_force(alpha[i].numpy(), beta[i].numpy(), domain[i].numpy(), theta)
        assert full[i].max().item() == pytest.approx(want)
        assert ok[i].item() == (want > 0)
        if want > 0:
            assert tuple(sorted((p[i].item(), q[i].item()))) in pairs


def test_softmax_jacobian_and_top_pair() -> None:
    """F = softmax: beta = -alpha (the probabilities sum to 1), checked against the two-call
    Jacobian of the probabilities; the best pair is then the top two alpha."""
    g = torch.Generator().manual_seed(5)
    model = Linear(torch.randn(4, 9, generator=g, dtype=torch.float64)).eval()
    x = torch.rand(3, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 2, 3])
    alpha, beta = jacobian(x, model(x), t, "probs")
    a2, b2 = jacobian(x, model(x).softmax(1), t, "logits")  # the general two-call formula
    torch.testing.assert_close(alpha, a2)
    torch.testing.assert_close(beta, b2)
    for theta in (1.0, -1.0):
        for seed in range(5):
            gg = torch.Generator().manual_seed(seed)
            a = torch.randn(6, 10, generator=gg, dtype=torch.float64)
            dom = torch.rand(6, 10, generator=gg) < 0.7
            p1, q1, ok1 = top_pair(a, dom, theta)
            p2, q2, ok2 = best_pairs(a, -a, dom, theta)
            assert torch.equal(ok1, ok2)
            s1 = pair_map(a, -a, dom, theta)
            i = torch.arange(6)
            torch.testing.assert_close(s1[i, p1, q1][ok1], s1[i, p2, q2][ok2])


def test_pair_map_diagonal_and_domain_are_zero() -> None:
    alpha = torch.tensor([[1.0, 2.0, 3.0]])
    beta = torch.tensor([[-1.0, -1.0, -1.0]])
    domain = torch.tensor([[True, True, False]])
    s = pair_map(alpha, beta, domain)
    assert s[0].diagonal().eq(0).all() and s[0, :, 2].eq(0).all() and s[0, 2, :].eq(0).all()
    assert s[0, 0, 1].item() == 3.0 * 2.0


def test_first_step_on_a_linear_model_changes_the_best_pair() -> None:
    """gamma allowing one pair: the attack sets exactly the brute-force best pair to 1."""
    g = torch.Generator().manual_seed(1)
    model = Linear(torch.randn(4, 16, generator=g, dtype=torch.float64)).eval()
    x = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 0.5
    with torch.no_grad():
        y = model(x).argmax(1)
    t = (y + 1) % 4
    res = JSMA(gamma=2 / 16, output="logits")(model, x, y, target=t)
    for i in range(3):
        a = model.w[t[i]].detach().numpy()
        b = model.w.detach().sum(0).numpy() - a
        _, pairs = brute_force(a, b, np.ones(16, dtype=bool), 1.0)
        changed = tuple(torch.nonzero(res.x_adv[i].flatten() != x[i].flatten()).flatten().tolist())
        assert changed in pairs
        assert (res.x_adv[i].flatten()[list(changed)] == 1).all()


def test_batch_equals_one_by_one(cnn, mnist_test) -> None:
    """Vectorised over images: the batch result is each image's own result."""
    x, y = mnist_test[0][:4], mnist_test[1][:4]
    t = (y + 3) % 10
    attack = JSMA(gamma=0.05)
    batch = attack(cnn, x, y, target=t).x_adv
    for i in range(4):
        one = attack(cnn, x[i:i + 1], y[i:i + 1], target=t[i:i + 1]).x_adv
        torch.testing.assert_close(one, batch[i:i + 1])


def test_any_number_of_classes_and_decrease_variant() -> None:
    g = torch.Generator().manual_seed(2)
    model = Linear(torch.randn(7, 25, generator=g, dtype=torch.float64)).eval()
    x = torch.rand(6, 1, 5, 5, generator=g, dtype=torch.float64) * 0.5 + 0.5
    with torch.no_grad():
        y = model(x).argmax(1)
    res = JSMA(theta=-1.0, gamma=0.5, output="logits", target_selection="least_likely")(
        model, x, y)
    assert (res.x_adv <= x).all()  # decrease only
    assert res.norms["l0"].max() <= 0.5 * 25
    with torch.no_grad():
        least = model(x).argmin(1)
    assert torch.equal(res.target, least)


def test_bad_settings() -> None:
    for kw in ({"theta": 0.0}, {"gamma": 0.0}, {"gamma": 1.5}, {"target_selection": "far"},
               {"output": "softmax"}):
        with pytest.raises(advlab.errors.ThreatModelError):
            JSMA(**kw)


def test_cnn_strength(cnn, mnist_test) -> None:
    """The paper's settings (theta=1, gamma=14.5%): most targets reached, pred == target,
    never more than gamma of the pixels changed."""
    x, y = mnist_test[0][:6], mnist_test[1][:6]
    t = (y + 1) % 10
    res = JSMA()(cnn, x, y, target=t)
    assert res.success.float().mean() >= 5 / 6
    assert (res.norms["l0"] <= int(0.145 * 784)).all()
    with torch.no_grad():
        assert torch.equal(cnn(res.x_adv).argmax(1)[res.success], t[res.success])
    assert res.norms["l0"][res.success].mean() < 0.08 * 784
