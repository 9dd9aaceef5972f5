"""The ensemble and the network vote (detectors/voting.py), recomputed by hand."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from advlab.detectors import Ensemble, NetworkVote


def test_ensemble_and_network_vote(by_hand, tiny_factory) -> None:
    model, x, y, xt = by_hand
    others = [tiny_factory(1), tiny_factory(2)]
    ens = Ensemble([model, *others])
    assert not ens.training
    with torch.no_grad():
        expected = torch.stack([F.log_softmax(m(xt), 1) for m in [model, *others]]).mean(0)
        labels = torch.stack([m(xt).argmax(1) for m in [model, *others]])
    torch.testing.assert_close(ens(xt), expected)
    det = NetworkVote(others).fit(model, x, y)
    torch.testing.assert_close(det.score(xt), (labels != labels[0]).float().mean(0))
    same = NetworkVote([tiny_factory(0)]).fit(model, x, y)
    assert (same.score(xt) == 0).all()
    counts = F.one_hot(labels, 10).sum(0)
    unique = (counts.max(1).values >= 2)
    assert torch.equal(det.majority(xt)[unique], counts.argmax(1)[unique])
