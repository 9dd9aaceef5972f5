"""Every bad input gets a clear advlab error."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import advlab
from advlab.errors import (
    AdvlabError,
    InputError,
    LabelError,
    ModelModeError,
    ModelOutputError,
    ThreatModelError,
)

X = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("x, y, err, match", [
    (X.clone().index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), Y, InputError, "NaN"),
    (X + 2, Y, InputError, r"\[0, 1\]"),
    (X - 1, Y, InputError, "Normalize"),
    (X[0], Y, InputError, "N x C x H x W"),
    ((X * 255).to(torch.uint8), Y, InputError, "float"),
    (X, Y[:-1], LabelError, "shape"),
    (X, Y.float(), LabelError, "int64"),
    (X, torch.full_like(Y, 10), LabelError, r"\[0, 10\)"),
    (X, -Y - 1, LabelError, r"\[0, 10\)"),
])
def test_bad_inputs(tiny: nn.Module, x: torch.Tensor, y: torch.Tensor, err: type, match: str
                    ) -> None:
    with pytest.raises(err, match=match):
        advlab.attacks.get("fgsm")(tiny, x, y)


def test_bad_target(tiny: nn.Module) -> None:
    with pytest.raises(LabelError, match="target equals the true label"):
        advlab.attacks.get("fgsm")(tiny, X, Y, target=Y.clone())


def test_softmax_model_rejected(tiny: nn.Module) -> None:
    with pytest.raises(ModelOutputError, match="probabilities"):
        advlab.attacks.get("fgsm")(nn.Sequential(tiny, nn.Softmax(1)), X, Y)


def test_nan_model_rejected() -> None:
    class NaNModel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((len(x), 3), float("nan"))

    with pytest.raises(ModelOutputError, match="NaN"):
        advlab.attacks.get("fgsm")(NaNModel().eval(), X, torch.zeros(4, dtype=torch.int64))


def test_nan_logits_beyond_the_probe_rows_rejected() -> None:
    """The output is checked on the attack's first forward pass (an oracle's model: on a few
    probe rows) and on every row at the end."""
    class LateNaN(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            bad = x[:, 0, 0, 0] > 0.5
            return torch.where(bad[:, None], float("nan"), x.flatten(1)[:, :3] * 10)

    x = torch.zeros(12, 1, 8, 8)
    x[10:] = 1.0  # rows 10 and 11, past the probe rows, give NaN logits
    with pytest.raises(ModelOutputError, match="NaN"):
        advlab.attacks.get("fgsm")(LateNaN().eval(), x, torch.zeros(12, dtype=torch.int64))


def test_train_mode_refused_not_switched(tiny: nn.Module) -> None:
    tiny.train()
    with pytest.raises(ModelModeError, match="eval"):
        advlab.attacks.get("pgd")(tiny, X, Y)
    assert tiny.training


def test_negative_eps() -> None:
    with pytest.raises(ThreatModelError, match="non-negative"):
        advlab.attacks.PGD(eps=-0.1)


def test_unknown_attack_lists_names() -> None:
    with pytest.raises(AdvlabError, match="available: .*pgd"):
        advlab.attacks.get("pgdd")


# ----------------------------------------------------------------------------- issue 17


def test_image_range_error_shows_the_offending_value() -> None:
    """A maximum of 1 + 1e-6 was reported as "got values in [1e-06, 1]"."""
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    x[0, 0, 0, 0] = 1 + 1e-6
    with pytest.raises(InputError, match=r"got values in \[0.5, 1.000001\]"):
        advlab.validation.check_images(x)


def _settings(steps: int = 1, eps: float | None = None, *, names: list[str] | None = None,
              mode: str = "a", flag: bool = False) -> None:
    """A function whose keywords check_kwargs checks."""


@pytest.mark.parametrize("kw, ok", [
    ({"steps": 2}, True), ({"steps": 2.5}, False), ({"steps": True}, False),
    ({"steps": "2"}, False), ({"eps": None}, True), ({"eps": 1}, True),
    ({"eps": float("nan")}, False), ({"eps": "0.1"}, False), ({"names": ["a"]}, True),
    ({"names": "a"}, False), ({"names": [1]}, False), ({"mode": 3}, False),
    ({"flag": 1}, False), ({"other": 1}, False),
])
def test_check_kwargs(kw: dict, ok: bool) -> None:
    if ok:
        advlab.validation.check_kwargs(_settings, kw, "settings")
    else:
        with pytest.raises(AdvlabError, match="settings"):
            advlab.validation.check_kwargs(_settings, kw, "settings")


class _DetachedInput(nn.Module):
    """Logits with parameters in the graph but no path to x (a detach inside forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.detach().flatten(1))


class _Float64Logits(nn.Module):
    """float64 logits for a float32 image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)).double()


def _xy() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    return x, torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd-ce", "apgd-dlr", "mifgsm"])
def test_gradient_attack_on_a_model_without_a_graph_to_its_input_says_so(name) -> None:  # noqa: ANN001
    x, y = _xy()
    with pytest.raises(ModelOutputError, match="no gradient path to its input"):
        advlab.attacks.get(name, eps=0.1)(_DetachedInput().eval(), x, y)


def test_check_graph_finds_the_input_leaf_and_non_leaf() -> None:
    from advlab.validation import check_graph

    fc = nn.Linear(16, 3)
    leaf = torch.rand(2, 16, requires_grad=True)
    check_graph(fc(leaf * 2), leaf)                          # a leaf input
    mid = leaf + 1
    check_graph(fc(mid), mid)                                # a non-leaf input
    with pytest.raises(ModelOutputError):
        check_graph(fc(mid.detach()), mid)


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr", "square", "fab", "fmn", "cw-l2", "nes"])
def test_float64_logits_of_a_float32_image_are_attacked(name) -> None:  # noqa: ANN001
    x, y = _xy()
    model = _Float64Logits().eval()
    kw = {"eps": 0.3} if name not in ("fab", "fmn", "cw-l2") else {}
    kw.update({"apgd-ce": {"steps": 5}, "apgd-dlr": {"steps": 5}, "square": {"max_queries": 20},
               "fab": {"steps": 3}, "fmn": {"steps": 3}, "cw-l2": {"steps": 3},
               "nes": {"max_queries": 20}}[name])
    res = advlab.attacks.get(name, **kw)(model, x, y)
    assert res.x_adv.dtype == torch.float32 and res.x_adv.shape == x.shape
    assert bool(torch.isfinite(res.x_adv).all())
