"""AnyOf (detectors/combine.py): each member normalised by the median and 99th percentile of
its scores on the held-out clean rows, the score their maximum, recomputed by hand."""
from __future__ import annotations

import pytest
import torch

from advlab.detectors import ActivationKNN, AnyOf, FeatureSqueezing
from advlab.errors import InputError


def test_any_of_by_hand(by_hand) -> None:
    model, x, y, xt = by_hand
    det = AnyOf([FeatureSqueezing(), ActivationKNN(["fc"], k=3)], validation=0.2,
                seed=3).fit(model, x, y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
    val, tr = perm[:20], perm[20:]  # 20% of 100 held out
    members = [FeatureSqueezing().fit(model, x[tr], y[tr]),
               ActivationKNN(["fc"], k=3).fit(model, x[tr], y[tr])]
    z = []
    for i, m in enumerate(members):
        s = m.score(x[val])
        med, spread = s.median(), s.quantile(0.99) - s.median()
        assert det.location_[i] == pytest.approx(float(med))
        assert det.spread_[i] == pytest.approx(float(spread))
        z.append((m.score(xt) - med) / spread)
    torch.testing.assert_close(det.member_scores(xt), torch.stack(z))
    torch.testing.assert_close(det.score(xt), torch.stack(z).amax(0))


def test_any_of_refuses_bad_settings() -> None:
    with pytest.raises(InputError, match="non-empty list of detectors"):
        AnyOf([])
    with pytest.raises(InputError, match="non-empty list of detectors"):
        AnyOf([FeatureSqueezing(), "knn"])  # type: ignore[list-item]
    with pytest.raises(InputError, match="validation must lie in"):
        AnyOf([FeatureSqueezing()], validation=1.0)
