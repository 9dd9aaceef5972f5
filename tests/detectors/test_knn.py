"""Nearest-neighbour search and the kNN detectors against scikit-learn and by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors
from torch import nn

from advlab.detectors import ActivationKNN, DeepKNN, knn_search
from advlab.detectors.knn import _vote
from advlab.errors import InputError, UnknownNameError


@pytest.mark.parametrize("precise", [False, True])
@pytest.mark.parametrize("max_elements", [7, 100, 1 << 22])  # heavy chunking .. one block
def test_knn_search_matches_sklearn(precise: bool, max_elements: int) -> None:
    g = torch.Generator().manual_seed(0)
    base, query = torch.randn(97, 5, generator=g), torch.randn(33, 5, generator=g)
    d, i = knn_search(query, base, 6, max_elements=max_elements, precise=precise)
    sk_d, sk_i = NearestNeighbors(n_neighbors=6).fit(base.numpy()).kneighbors(query.numpy())
    np.testing.assert_array_equal(i.numpy(), sk_i)
    np.testing.assert_allclose(d.numpy(), sk_d, rtol=1e-4, atol=1e-5)


def test_knn_search_errors() -> None:
    with pytest.raises(InputError):
        knn_search(torch.zeros(3, 2), torch.zeros(4, 3), 1)
    with pytest.raises(InputError):
        knn_search(torch.zeros(3, 2), torch.zeros(4, 2), 5)


def test_vote_majority_and_ties() -> None:
    labels = torch.tensor([[1, 2, 2, 1, 3], [4, 0, 0, 4, 4], [3, 1, 1, 3, 0]])
    # row 0: 1 and 2 tie (2 each), 1 is nearest -> 1; row 1: 4; row 2: tie 3/1, 3 nearest
    assert _vote(labels, 5).tolist() == [1, 4, 3]


class TwoLayer(nn.Module):
    """8 x 8 -> hidden 6 -> 3 classes, with named layers."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.flat = nn.Flatten()
        self.fc1 = nn.utils.skip_init(nn.Linear, 64, 6)
        self.relu = nn.ReLU()
        self.fc2 = nn.utils.skip_init(nn.Linear, 6, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.flat(x))))


def _data(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_activation_knn_by_hand() -> None:
    model = TwoLayer()
    x, xt = _data(80, 1), _data(20, 2)
    y = torch.randint(0, 3, (80,), generator=torch.Generator().manual_seed(3))
    det = ActivationKNN(["fc1", "relu"], k=5).fit(model, x, y)
    with torch.no_grad():
        feats = [torch.cat([model.fc1(z.flatten(1)), model.relu(model.fc1(z.flatten(1)))], 1)
                 for z in (x, xt)]
        pred = model(xt).argmax(1)
    _, idx = NearestNeighbors(n_neighbors=5).fit(feats[0].numpy()).kneighbors(feats[1].numpy())
    nb = y.numpy()[idx]
    expected = (nb != pred.numpy()[:, None]).mean(1)
    np.testing.assert_allclose(det.score(xt).numpy(), expected, atol=1e-7)
    majority = torch.tensor([np.bincount(r, minlength=3).argmax() for r in nb])
    clear = torch.tensor([bool(np.sort(np.bincount(r, minlength=3))[-1] >
                               np.sort(np.bincount(r, minlength=3))[-2]) for r in nb])
    assert torch.equal(det.knn_predict(xt)[clear], majority[clear])
    assert torch.equal(det.flags(xt), det.knn_predict(xt) != pred)


def test_activation_knn_unknown_layer() -> None:
    with pytest.raises(UnknownNameError, match="fc9"):
        ActivationKNN(["fc9"]).fit(TwoLayer(), _data(10, 1), torch.zeros(10, dtype=torch.long))


def test_deep_knn_p_values_by_hand() -> None:
    model = TwoLayer()
    x, xt = _data(60, 1), _data(15, 2)
    y = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(3))
    det = DeepKNN(["fc1", "fc2"], k=4, calibration=20, seed=7).fit(model, x, y)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(7))
    cal, tr = perm[:20], perm[20:]
    with torch.no_grad():
        acts = {"fc1": lambda z: model.fc1(z.flatten(1)), "fc2": model}

        def counts(z: torch.Tensor) -> np.ndarray:
            c = np.zeros((len(z), 3))
            for f in acts.values():
                nn_ = NearestNeighbors(n_neighbors=4).fit(f(x[tr]).numpy())
                _, idx = nn_.kneighbors(f(z).numpy())
                for row, labels in enumerate(y[tr].numpy()[idx]):
                    c[row] += np.bincount(labels, minlength=3)
            return c

        alpha_cal = 2 * 4 - counts(x[cal])[np.arange(20), y[cal].numpy()]
        alpha = 2 * 4 - counts(xt)
        expected = (alpha_cal[None, None, :] >= alpha[:, :, None]).mean(2)
        pred = model(xt).argmax(1).numpy()
    np.testing.assert_allclose(det.p_values(xt).numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(det.score(xt).numpy(), 1 - expected[np.arange(15), pred],
                               atol=1e-7)


def test_class_distances_and_soft_score() -> None:
    from advlab.detectors.knn import class_distances, soft_knn_score

    g = torch.Generator().manual_seed(0)
    base, q = torch.randn(40, 3, generator=g), torch.randn(5, 3, generator=g)
    labels = torch.arange(40) % 4
    labels[labels == 3] = 2  # class 3 empty
    d = class_distances(q, base, labels, 4, 3)
    full = torch.cdist(q, base)
    for c in range(3):
        expected = full[:, labels == c].sort(1).values[:, :3].mean(1)
        torch.testing.assert_close(d[:, c], expected)
    assert torch.isinf(d[:, 3]).all()
    pred = torch.tensor([0, 1, 2, 0, 1])
    own = d.gather(1, pred[:, None]).squeeze(1)
    other = d.scatter(1, pred[:, None], float("inf")).amin(1)
    torch.testing.assert_close(soft_knn_score(d, pred, 0.5), torch.sigmoid((own - other) / 0.5))
    qg = q.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(class_distances(qg, base, labels, 4, 3)[:, :3].sum(), qg)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_small_classes_keep_the_surrogate_finite() -> None:
    """A class with fewer rows than m uses all of them (it used to be +inf, and the soft score
    of an input predicted as that class became NaN, silently disarming adaptive attacks)."""
    from advlab.detectors.knn import class_distances, soft_knn_score

    g = torch.Generator().manual_seed(1)
    base, q = torch.randn(7, 3, generator=g), torch.randn(4, 3, generator=g, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1])  # class 1 has 2 rows < m = 3
    d = class_distances(q, base, labels, 2, 3)
    full = torch.cdist(q, base)
    torch.testing.assert_close(d[:, 1], full[:, 5:].mean(1))
    score = soft_knn_score(d, torch.tensor([1, 1, 0, 1]), 0.5)
    (grad,) = torch.autograd.grad(score.sum(), q)
    assert torch.isfinite(score).all() and torch.isfinite(grad).all()
    inf = float("inf")
    unseen = soft_knn_score(torch.tensor([[1.0, inf]]), torch.tensor([1]), 0.5)
    assert unseen.item() == 1.0  # no training rows of the predicted class: most suspicious
    blank = soft_knn_score(torch.tensor([[inf, inf]]), torch.tensor([1]), 0.5)
    assert blank.item() == 0.5  # nothing to compare with
