"""advlab.zoo: Normalize, architectures, deterministic training, safe weight files, the cache."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from advlab import data, zoo
from advlab.errors import InputError, LabelError, ModelFileError, UnknownNameError


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty $ADVLAB_HOME for one test."""
    monkeypatch.setenv("ADVLAB_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (*data.load("digits", "train"), *data.load("digits", "test"))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- Normalize


def test_normalize_is_exact_per_channel() -> None:
    Normalize = zoo.Normalize  # noqa: N806
    norm = Normalize([0.1, 0.5, 0.9], [0.2, 0.25, 0.5])
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([(x[:, 0] - 0.1) / 0.2, (x[:, 1] - 0.5) / 0.25,
                            (x[:, 2] - 0.9) / 0.5], 1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-6, atol=1e-6)
    assert set(dict(norm.named_buffers())) == {"mean", "std"} and not list(norm.parameters())
    scalar = Normalize(0.1307, 0.3081)
    torch.testing.assert_close(scalar(x), (x - 0.1307) / 0.3081)
    for bad in ((0.0, 0.0), (0.0, -1.0), ([0.1, 0.2], [0.3, 0.3, 0.3]), (float("nan"), 1.0)):
        with pytest.raises(InputError):
            Normalize(*bad)


@pytest.mark.parametrize("shape", [(4, 3, 26, 26), (4, 3, 11, 11), (2, 1, 2, 3)])
def test_maxpool2x2_equals_torch_with_and_without_autograd(shape: tuple) -> None:
    g = torch.Generator().manual_seed(0)
    pool, ref = zoo.MaxPool2x2(), nn.MaxPool2d(2)
    for x in (torch.randn(*shape, generator=g),                      # distinct values
              torch.randint(0, 3, shape, generator=g).float()):      # many ties
        with torch.no_grad():
            assert torch.equal(pool(x), ref(x))
        xg = x.clone().requires_grad_()
        up = torch.randn(ref(x).shape, generator=g)
        (grad,) = torch.autograd.grad(pool(xg), xg, up)
        (grad_ref,) = torch.autograd.grad(ref(xg), xg, up)
        assert torch.equal(grad, grad_ref)


# ---------------------------------------------------------------- architectures


@pytest.mark.parametrize("name, shape, layers", [
    ("mnist-mlp", (1, 28, 28), ["fc1", "relu1", "fc2", "relu2", "fc3"]),
    ("mnist-cnn", (1, 28, 28), ["conv1", "conv2", "fc1", "fc2"]),
    ("digits-mlp", (1, 8, 8), ["fc1", "fc2"]),
])
def test_architectures_shapes_and_layer_names(name: str, shape: tuple, layers: list) -> None:
    model = zoo.build(name).eval()
    assert model(torch.rand(3, *shape)).shape == (3, 10)
    for layer_name in layers:
        assert zoo.layer(model, layer_name) is getattr(model, layer_name)
    assert isinstance(zoo.layer(model, "norm"), zoo.Normalize)
    with pytest.raises(UnknownNameError, match="fc1"):
        zoo.layer(model, "fc9")


def test_mnist_mlp_is_the_lecture_network() -> None:
    model = zoo.build("mnist-mlp")
    sizes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert sizes == [(784, 64), (64, 64), (64, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2


def test_build_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a, b, c = zoo.build("mnist-cnn", seed=1), zoo.build("mnist-cnn", seed=1), zoo.build(
        "mnist-cnn", seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_weights(a, b) and not _same_weights(a, c)
    bound = 1 / 784 ** 0.5  # PyTorch's default Linear init: |w|, |b| <= 1/sqrt(fan_in)
    fc1 = zoo.build("mnist-mlp").fc1
    assert fc1.weight.abs().max() <= bound and fc1.bias.abs().max() <= bound
    assert fc1.weight.std() > bound / 2


# ---------------------------------------------------------------- training


def test_train_is_deterministic_in_place_and_leaves_no_grads(digits) -> None:
    x, y, xt, yt = digits
    state = torch.get_rng_state()
    a = zoo.build("digits-mlp", seed=0)
    returned = zoo.train(a, x, y, epochs=3, lr=1e-2, batch_size=64, seed=5)
    b = zoo.train(zoo.build("digits-mlp", seed=0), x, y, epochs=3, lr=1e-2, batch_size=64, seed=5)
    c = zoo.train(zoo.build("digits-mlp", seed=0), x, y, epochs=3, lr=1e-2, batch_size=64, seed=6)
    assert returned is a and not a.training
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_weights(a, b) and not _same_weights(a, c)
    assert all(p.grad is None for p in a.parameters())
    assert zoo.accuracy(a, xt, yt) > 0.9
    assert not _same_weights(a, zoo.build("digits-mlp", seed=0))  # it did train, in place


def test_train_soft_one_hot_labels_equal_hard_labels(digits) -> None:
    x, y, _, _ = digits
    x, y = x[:256], y[:256]
    hard = zoo.train(zoo.build("digits-mlp"), x, y, epochs=2, batch_size=32, seed=1)
    soft = zoo.train(zoo.build("digits-mlp"), x, nn.functional.one_hot(y, 10).float(),
                     epochs=2, batch_size=32, seed=1)
    for p, q in zip(hard.parameters(), soft.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_train_custom_loss_and_bad_inputs(digits) -> None:
    x, y, _, _ = digits
    seen = []

    def loss_fn(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        seen.append((model.training, len(xb)))
        return nn.functional.cross_entropy(model(xb), yb)

    zoo.train(zoo.build("digits-mlp"), x[:100], y[:100], epochs=1, batch_size=40, loss_fn=loss_fn)
    assert seen == [(True, 40), (True, 40), (True, 20)]
    model = zoo.build("digits-mlp")
    with pytest.raises(LabelError):
        zoo.train(model, x, y.float())
    with pytest.raises(LabelError):
        zoo.train(model, x, y[:-1])
    with pytest.raises(InputError):
        zoo.train(model, (x * 255).long(), y)
    with pytest.raises(InputError):
        zoo.train(model, x, y, batch_size=0)


def test_accuracy_matches_a_direct_count(digits) -> None:
    _, _, xt, yt = digits
    model = zoo.build("digits-mlp").eval()
    with torch.no_grad():
        expected = int((model(xt).argmax(1) == yt).sum()) / len(yt)
    assert 0 < expected < 1 and zoo.accuracy(model, xt, yt, batch_size=7) == expected


# ---------------------------------------------------------------- weight files


def test_save_load_round_trip_with_metadata(tmp_path: Path) -> None:
    model = zoo.build("mnist-cnn", seed=3)
    path = zoo.save(model, tmp_path / "sub" / "m.safetensors", {"arch": "mnist-cnn", "acc": 0.5,
                                                                "nested": {"k": [1, 2]}})
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temporary left
    loaded = zoo.load_weights(zoo.build("mnist-cnn", seed=4), path)
    assert _same_weights(model, loaded)
    assert zoo.read_metadata(path) == {"arch": "mnist-cnn", "acc": 0.5, "nested": {"k": [1, 2]}}
    with pytest.raises(ModelFileError, match="JSON"):
        zoo.save(model, tmp_path / "x.safetensors", {"bad": object()})


def test_torch_save_state_dict_is_accepted(tmp_path: Path) -> None:
    model = zoo.build("digits-mlp", seed=1)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    for name in ("w.pt", "ckpt.pth"):
        assert _same_weights(model, zoo.load_weights(zoo.build("digits-mlp"), tmp_path / name))


class _Payload:
    """Unpickling this would record that arbitrary code ran."""

    ran: list[str] = []

    def __reduce__(self):  # noqa: ANN204
        return (_Payload.ran.append, ("unpickled!",))


def test_pickled_objects_are_refused_and_never_run(tmp_path: Path) -> None:
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"fc1.weight": _Payload()}, protocol=2))
    torch.save({"fc1.weight": torch.zeros(1), "x": _Payload()}, tmp_path / "evil.pt")
    model = zoo.build("digits-mlp")
    for name in ("evil.pkl", "evil.pt"):
        with pytest.raises(ModelFileError, match="weights_only"):
            zoo.load_weights(model, tmp_path / name)
    assert _Payload.ran == []
    torch.save({"fc1": [1, 2]}, tmp_path / "lists.pt")  # allowed by weights_only, not weights
    with pytest.raises(ModelFileError, match="state dict"):
        zoo.load_weights(model, tmp_path / "lists.pt")


def test_bad_weight_files(tmp_path: Path) -> None:
    model = zoo.build("digits-mlp")
    with pytest.raises(ModelFileError, match="does not exist"):
        zoo.load_weights(model, tmp_path / "missing.safetensors")
    (tmp_path / "w.npy").write_bytes(b"\x93NUMPY random bytes")
    with pytest.raises(ModelFileError, match="neither"):
        zoo.load_weights(model, tmp_path / "w.npy")
    good = zoo.save(model, tmp_path / "good.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-20])
    with pytest.raises(ModelFileError, match="corrupt"):
        zoo.load_weights(model, tmp_path / "cut.safetensors")
    with pytest.raises(ModelFileError, match="does not fit"):
        zoo.load_weights(zoo.build("mnist-mlp"), good)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelFileError):
        zoo.load_weights(model, tmp_path / "cut.safetensors")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- the cache


def test_load_trains_caches_then_reads_the_cache(home: Path, monkeypatch) -> None:
    model = zoo.load("digits-mlp")
    path = home / "models" / "digits-mlp.safetensors"
    assert path.is_file() and zoo.cache_path("digits-mlp") == path
    assert not model.training and all(p.grad is None for p in model.parameters())
    meta = zoo.read_metadata(path)
    assert meta["arch"] == "digits-mlp" and meta["training"]["dataset"] == "digits"
    assert meta["clean_accuracy"] == zoo.accuracy(model, *data.load("digits", "test")) > 0.93

    def no_training(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the cached model should have been loaded, not retrained")

    monkeypatch.setattr(zoo, "train", no_training)
    assert _same_weights(zoo.load("digits-mlp"), model)
    assert _same_weights(zoo.load("digits-mlp", train_if_missing=False), model)


def test_corrupt_or_mismatching_cache_is_retrained(home: Path, caplog) -> None:
    reference = zoo.load("digits-mlp")
    path = zoo.cache_path("digits-mlp")
    wrong_shapes = zoo.save(zoo.mnist_mlp(), home / "other.safetensors",
                            zoo.read_metadata(path)).read_bytes()
    stale = zoo.save(reference, home / "stale.safetensors",
                     {**zoo.read_metadata(path), "version": -1}).read_bytes()
    meta = zoo.read_metadata(path)
    other_settings = zoo.save(reference, home / "settings.safetensors",
                              {**meta, "training": {**meta["training"], "epochs": 1}}).read_bytes()
    for content in (b"", b"garbage" * 10, path.read_bytes()[:-5], wrong_shapes, stale,
                    other_settings):
        path.write_bytes(content)
        with pytest.raises(ModelFileError):
            zoo.load("digits-mlp", train_if_missing=False)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="advlab.zoo"):
            model = zoo.load("digits-mlp")
        assert "retraining" in caplog.text
        assert _same_weights(model, reference)  # deterministic retraining
        assert _same_weights(zoo.load("digits-mlp", train_if_missing=False), reference)


def test_load_errors(home: Path) -> None:
    with pytest.raises(ModelFileError, match="not cached"):
        zoo.load("digits-mlp", train_if_missing=False)
    with pytest.raises(UnknownNameError, match="mnist-mlp"):
        zoo.load("resnet-1000")
    assert set(zoo.available()) == {"mnist-mlp", "mnist-cnn", "digits-mlp"}


# ---------------------------------------------------------------- the zoo models themselves


@pytest.mark.slow
@pytest.mark.parametrize("fixture, threshold", [("mlp", 0.92), ("cnn", 0.96)])
def test_clean_accuracy_on_mnist5k_test(request, mnist_test, fixture: str,
                                        threshold: float) -> None:
    model = request.getfixturevalue(fixture)  # tests/conftest.py: zoo.load, cached
    x, y = mnist_test
    acc = zoo.accuracy(model, x, y)
    assert acc >= threshold
    assert not model.training and all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- issue 17


@pytest.mark.parametrize("save_kw", [{}, {"_use_new_zipfile_serialization": False}])
def test_torch_save_file_named_safetensors_says_what_it_is(tmp_path: Path,
                                                            save_kw: dict) -> None:
    path = tmp_path / "w.safetensors"
    torch.save(zoo.build("mnist-mlp").state_dict(), path, **save_kw)
    with pytest.raises(ModelFileError, match="named .safetensors but holds a (zip archive|"
                       "pickle) \\(what torch.save writes\\)"):
        zoo.load_weights(zoo.build("mnist-mlp"), path)


@pytest.mark.parametrize("where, what", [("dir", "is a directory"),
                                         ("/dev/zero", "is not a regular file")])
def test_weights_path_that_is_not_a_file(tmp_path: Path, where: str, what: str) -> None:
    path = tmp_path if where == "dir" else Path(where)
    if not path.exists():
        pytest.skip(f"no {path} here")
    with pytest.raises(ModelFileError, match=what):
        zoo.load_weights(zoo.build("mnist-mlp"), path)
