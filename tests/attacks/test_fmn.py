"""FMN: the minimal perturbation of a linear classifier in closed form (L2, Linf, L1, L0),
the L0 projection against numpy, then strength on the zoo models beside DeepFool and PGD."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import advlab
from advlab.attacks import FMN, PGD, DeepFool
from advlab.attacks.fmn import cosine, project_l0
from testkit import linear_setup

#: the dual norm q of each p: the minimal L_p perturbation of a linear binary classifier with
#: margin m and weight difference w (no box in the way) is |m| / ||w||_q
DUAL = {"l2": 2, "linf": 1, "l1": float("inf")}


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_linear_minimum_in_closed_form(norm: str) -> None:
    model, x, y, m, w = linear_setup(n=6)
    want = m / torch.linalg.vector_norm(w, ord=DUAL[norm])
    step = {"l2": want * w.abs().max() / w.norm(), "linf": want, "l1": want}[norm]
    free = step < 0.4  # x lies in [0.4, 0.6]: the box is not in the way
    assert free.sum() >= 5
    x, y, want = x[free], y[free], want[free]
    res = FMN(norm=norm, steps=200)(model, x, y)
    assert res.success.all()
    got = res.norms[norm]
    assert (got >= want * (1 - 1e-6)).all(), "below the true minimum: impossible"
    torch.testing.assert_close(got, want, rtol=0.02, atol=0)
    torch.testing.assert_close(res.info["norm"], got)


def test_linear_l0_minimum_by_greedy() -> None:
    """For a linear model the fewest entries to change is greedy: the entries with the largest
    possible change of the margin, |w_i| times the room to the box on the helpful side."""
    model, x, y, m, w = linear_setup(n=6)
    sign = torch.where(y == 0, 1.0, -1.0).to(w.dtype)  # move towards the other class
    flat = x.flatten(1)
    gain = torch.where(sign[:, None] * w > 0, 1 - flat, flat) * w.abs()  # per entry
    cum = gain.sort(1, descending=True).values.cumsum(1)
    want = (cum < m[:, None]).sum(1).to(w.dtype) + 1
    res = FMN(norm="l0", steps=200)(model, x, y)
    assert res.success.all()
    assert (res.norms["l0"] >= want).all(), "fewer than the minimum: impossible"
    assert (res.norms["l0"] <= want + 1).all(), (res.norms["l0"], want)


def test_project_l0_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    d = torch.randn(5, 1, 4, 4, generator=g)
    k = torch.tensor([0.0, 1.0, 3.0, 7.0, 16.0])
    got = project_l0(d, k).flatten(1).numpy()
    for row, kk in zip(range(5), k.int().tolist()):
        v = d[row].flatten().numpy()
        want = np.zeros_like(v)
        top = np.argsort(-np.abs(v))[:kk]
        want[top] = v[top]
        np.testing.assert_array_equal(got[row], want)


def test_cosine_schedule() -> None:
    assert cosine(1.0, 0.01, 0, 10) == 1.0
    assert cosine(1.0, 0.01, 5, 10) == pytest.approx(0.505)
    assert cosine(1.0, 0.01, 10, 10) == pytest.approx(0.01)


def test_targeted_reaches_the_target() -> None:
    model, x, y, _, _ = linear_setup(n=4)
    res = FMN(steps=50)(model, x, y, target=1 - y)
    assert res.success.all() and torch.equal(res.logits.argmax(1), 1 - y)


def test_misclassified_examples_stay_at_x() -> None:
    model, x, y, _, _ = linear_setup(n=4)
    res = FMN(steps=5)(model, x, 1 - y)
    assert res.success.all() and torch.equal(res.x_adv, x)
    assert (res.info["norm"] == 0).all()


def test_bad_settings() -> None:
    with pytest.raises(advlab.errors.ThreatModelError):
        FMN(norm="l3")
    with pytest.raises(advlab.errors.ThreatModelError):
        FMN(gamma=1.5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_cnn_strength_beside_deepfool(cnn, mnist_test, norm: str) -> None:
    """Every image fooled; median norm no larger than DeepFool's (both minimum-norm), and
    inside the ball where PGD is known to succeed (L2 2.0, Linf 0.3 on this model)."""
    x, y = mnist_test[0][:12], mnist_test[1][:12]
    res = FMN(norm=norm, steps=50)(cnn, x, y)
    assert res.success.all()
    df = DeepFool(norm=norm)(cnn, x, y)
    assert res.norms[norm].median() <= df.norms[norm].median() * 1.05
    pgd = PGD(eps=res.norms[norm].median().item() * 0.5, norm=norm, steps=20)(cnn, x, y)
    assert pgd.success_rate < 1.0  # half FMN's median norm does not fool every image
