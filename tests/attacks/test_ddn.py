"""DDN: the minimal L2 perturbation of a linear classifier in closed form, the radius rule,
then strength on the zoo model beside DeepFool."""
from __future__ import annotations

import pytest
import torch

import advlab
from advlab.attacks import DDN, DeepFool
from testkit import Counted, linear_setup


def test_linear_minimum_in_closed_form() -> None:
    model, x, y, m, w = linear_setup(n=6)
    want = m / w.norm()
    res = DDN(steps=200)(model, x, y)
    assert res.success.all()
    assert (res.norms["l2"] >= want * (1 - 1e-6)).all(), "below the true minimum: impossible"
    torch.testing.assert_close(res.norms["l2"], want, rtol=0.05, atol=0)
    torch.testing.assert_close(res.info["norm"], res.norms["l2"])


def test_one_step_lands_on_the_sphere_of_the_grown_radius() -> None:
    """Step 1 from x (not adversarial): the radius grows to (1 + gamma) * init_eps and the
    iterate is init_eps * (1 + gamma) * g / ||g|| (here inside the box): checked by a second
    step's forward pass."""
    model, x, y, m, w = linear_setup(n=3)
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def forward(self, xx: torch.Tensor) -> torch.Tensor:
            seen.append(xx.detach().clone())
            return model(xx)

    DDN(steps=2, init_eps=0.05, gamma=0.1)(Spy().eval(), x, y)
    sign = torch.where(y == 0, 1.0, -1.0).to(w.dtype)  # CE of y ascends towards the other class
    want = x + 0.05 * 1.1 * (sign[:, None] * w / w.norm()).view(-1, 1, 4, 4)
    torch.testing.assert_close(seen[1], want)


def test_steps_cost_one_forward_backward_each() -> None:
    model, x, y, _, _ = linear_setup(n=4)
    counted = Counted(model).eval()
    DDN(steps=7)(counted, x, y)
    assert counted.calls == 7 + 1 + 1  # steps, the last iterate's check, the base's check


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        DDN(gamma=0.0)
    with pytest.raises(advlab.errors.ThreatModelError):
        DDN(init_eps=-1.0)


def test_cnn_strength_beside_deepfool(cnn, mnist_test) -> None:
    x, y = mnist_test[0][:12], mnist_test[1][:12]
    res = DDN(steps=50)(cnn, x, y)
    assert res.success.all()
    df = DeepFool()(cnn, x, y)
    assert res.norms["l2"].median() <= df.norms["l2"].median() * 1.05
