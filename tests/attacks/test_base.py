"""What every attack call pays for: the model's output checked on the attack's own first
forward pass (no separate probe), norms computed when first read, no copy of the caller's x."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import advlab
from advlab.errors import AttackError, LabelError, ModelOutputError
from advlab.threat import all_norms
from testkit import Counted

X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([0, 1, 2, 3, 4, 5])


def test_fgsm_runs_the_model_twice(tiny: nn.Module) -> None:
    """One forward-backward for the gradient, one forward for the success re-check."""
    model = Counted(tiny).eval()
    advlab.attacks.FGSM(eps=0.1)(model, X, Y)
    assert (model.calls, model.rows) == (2, 2 * len(X))


def test_softmax_rejected_at_the_first_forward(tiny: nn.Module) -> None:
    """A probability model fails before the attack spends its steps."""
    model = Counted(nn.Sequential(tiny, nn.Softmax(1))).eval()
    with pytest.raises(ModelOutputError, match="probabilities"):
        advlab.attacks.PGD(eps=0.1, steps=50)(model, X, Y)
    assert model.calls == 1


def test_labels_checked_against_the_first_output(tiny: nn.Module) -> None:
    for name in ("pgd", "jsma"):  # untargeted loop; targeted-only with chosen targets
        with pytest.raises(LabelError, match=r"\[0, 10\)"):
            advlab.attacks.get(name)(tiny, X, torch.full_like(Y, 10))
    with pytest.raises(LabelError, match="target"):
        advlab.attacks.get("pgd")(tiny, X, Y, target=torch.full_like(Y, 12))


def test_norms_computed_when_read(tiny: nn.Module) -> None:
    res = advlab.attacks.PGD(eps=0.1, steps=3)(tiny, X, Y)
    want = all_norms(res.x_adv - X)
    assert set(res.norms) == set(want) and len(res.norms) == 4
    for k, v in want.items():
        torch.testing.assert_close(res.norms[k], v)
    assert dict(res.norms).keys() == want.keys()


def test_norms_survive_copies_and_pickles(tiny: nn.Module) -> None:
    res = advlab.attacks.FGSM(eps=0.1)(tiny, X, Y)  # its x_adv was clipped in place
    want = all_norms(res.x_adv - X)
    buf = io.BytesIO()
    torch.save(res.norms, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for norms in (copy.deepcopy(res).norms, loaded, res.norms):
        for k, v in want.items():
            torch.testing.assert_close(norms[k], v)


def test_norms_after_an_in_place_change_are_an_error(tiny: nn.Module) -> None:
    res = advlab.attacks.FGSM(eps=0.1)(tiny, X, Y)
    res.x_adv.clamp_(0.2, 0.8)
    with pytest.raises(AttackError, match="in place"):
        res.norms["l2"]
    x = X.clone()
    read = advlab.attacks.FGSM(eps=0.1)(tiny, x, Y)
    linf = read.norms["linf"].clone()  # read first: later changes do not matter
    x.zero_()
    torch.testing.assert_close(read.norms["linf"], linf)


def test_result_never_shares_the_callers_x(tiny: nn.Module) -> None:
    """Every example already misclassified: early stopping moves nothing."""
    with torch.no_grad():
        wrong = (tiny(X).argmax(1) + 1) % 10
    x = X.clone()
    res = advlab.attacks.BIM(eps=0.1, steps=5)(tiny, x, wrong)
    assert torch.equal(res.x_adv, x) and res.success.all()
    res.x_adv.add_(0.5)
    assert torch.equal(x, X)


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_inputs_made_under_inference_mode(tiny: nn.Module, name: str) -> None:
    """Images loaded under torch.inference_mode() attack as well as plain ones."""
    with torch.inference_mode():
        x, y = X.clone(), Y.clone()
    atk = advlab.attacks.get(name, eps=0.1, seed=0)
    res, ref = atk(tiny, x, y), atk(tiny, X, Y)
    assert torch.equal(res.x_adv, ref.x_adv) and torch.equal(res.norms["linf"], ref.norms["linf"])
