"""advlab.models: the user's own network from a factory and weights, checked against the data;
autocast."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from advlab import models, zoo
from advlab.errors import (
    ConfigError,
    FactoryError,
    InputError,
    ModelFileError,
    ModelOutputError,
)
from userkit import Payload

NET = '''
from torch import nn

def build(num_classes=10, width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(width * 8 * 8, num_classes))

def broken(**kwargs):
    raise ValueError("no such width")

def not_a_module():
    return 3
'''


@pytest.fixture()
def net_file(tmp_path: Path) -> Path:
    path = tmp_path / "net.py"
    path.write_text(NET)
    return path


def spec(**d: object) -> models.ModelSpec:
    return models.model_spec({"name": "m", **d}, "models[0]")


def save_weights(net: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_factory_file_with_weights_is_the_saved_network(net_file: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = models.load_factory(f"{net_file}:build")(num_classes=5)
    w = save_weights(src, tmp_path / "w.safetensors")
    net = models.build(spec(factory=f"{net_file}:build", kwargs={"num_classes": 5},
                            weights=str(w)))
    x = torch.rand(3, 3, 8, 8)
    assert not net.training
    assert torch.equal(net(x), src.eval()(x))


def test_module_factory_equals_zoo_model_and_normalize_wraps(tmp_path: Path) -> None:
    ref = zoo.build("digits-mlp", seed=3).eval()
    w = save_weights(ref, tmp_path / "w.safetensors")
    net = models.build(spec(factory="advlab.zoo:digits_mlp", weights=str(w)))
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(net(x), ref(x))
    wrapped = models.build(spec(factory="advlab.zoo:digits_mlp", weights=str(w),
                                normalize={"mean": 0.5, "std": [0.25]}))
    assert torch.equal(wrapped(x), ref((x - 0.5) / 0.25))
    assert isinstance(wrapped.norm, zoo.Normalize) and "net.fc1" in dict(
        wrapped.named_modules())


def test_weights_of_another_shape_name_the_first_mismatch(net_file: Path,
                                                          tmp_path: Path) -> None:
    other = models.load_factory(f"{net_file}:build")(width=6)
    w = save_weights(other, tmp_path / "w.safetensors")
    with pytest.raises(ModelFileError, match=r"'0.weight' has shape \(6, 3, 3, 3\) in the "
                                             r"file but \(4, 3, 3, 3\) in the model"):
        models.build(spec(factory=f"{net_file}:build", weights=str(w)))
    w = save_weights(zoo.build("digits-mlp"), tmp_path / "zoo.safetensors")
    with pytest.raises(ModelFileError, match=r"the model's '0.weight' is not in the file"):
        models.build(spec(factory=f"{net_file}:build", weights=str(w)))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_payload_never_runs(net_file: Path, tmp_path: Path, how: str) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "w.pt"
    obj = {"0.weight": Payload(marker)}
    if how == "pickle":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path)
    with pytest.raises(ModelFileError, match="never unpickles"):
        models.build(spec(factory=f"{net_file}:build", weights=str(path)))
    assert not marker.exists()


def test_torch_state_dict_accepted_and_misnamed_file_explained(net_file: Path,
                                                                tmp_path: Path) -> None:
    src = models.load_factory(f"{net_file}:build")()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    net = models.build(spec(factory=f"{net_file}:build", weights=str(tmp_path / "w.pt")))
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(net(x), src.eval()(x))
    torch.save(src.state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ModelFileError, match="named .safetensors but holds a zip archive"):
        models.build(spec(factory=f"{net_file}:build",
                          weights=str(tmp_path / "w.safetensors")))


@pytest.mark.parametrize("factory, match", [
    ("no_such_package_xyz.models:build", "cannot import no_such_package_xyz"),
    ("{net}:missing", "has no 'missing'"),
    ("{net}:broken", "raised ValueError: no such width"),
    ("{net}:not_a_module", "returned int, not a torch.nn.Module"),
    ("{dir}/absent.py:build", "does not exist"),
])
def test_factory_errors(net_file: Path, factory: str, match: str) -> None:
    f = factory.format(net=net_file, dir=net_file.parent)
    with pytest.raises(FactoryError, match=match):
        models.build(spec(factory=f))


@pytest.mark.parametrize("d, match", [
    ({"factory": "nocolon"}, "must be 'package.module:callable'"),
    ({"factory": "a:b", "arch": "mnist-cnn", "weights": "w"}, "not both"),
    ({"weights": "w.safetensors"}, "needs its 'arch'"),
    ({"arch": "mnist-cnn"}, "needs its weights"),
    ({"kwargs": {"a": 1}}, "kwargs must be a table of the factory"),
    ({"factory": "torchvision.models:resnet18", "kwargs": {"weights": "DEFAULT"}},
     "advlab downloads nothing"),
    ({"factory": "timm:create_model", "kwargs": {"pretrained": True}}, "downloads nothing"),
    ({"factory": "a:b", "normalize": {"mean": [0.5, 0.5], "std": [1.0]}}, "per channel"),
    ({"factory": "a:b", "normalize": {"mean": [0.5], "std": [0.0]}}, "std > 0"),
    ({"factory": "a:b", "shape": [3]}, "unknown key"),
])
def test_spec_errors(d: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        spec(**d)


def test_relative_paths_are_read_from_the_config_folder(tmp_path: Path) -> None:
    s = spec(factory="net.py:build", weights="w.safetensors").relative_to(tmp_path)
    assert s.factory == f"{tmp_path / 'net.py'}:build"
    assert s.weights == str(tmp_path / "w.safetensors")
    assert spec(factory="pkg.mod:fn").relative_to(tmp_path).factory == "pkg.mod:fn"


def test_check_input_shape_and_classes(net_file: Path) -> None:
    net = models.build(spec(factory=f"{net_file}:build"))
    models.check_input(net, torch.rand(5, 3, 8, 8), 10)
    with pytest.raises(InputError, match=r"rejects the data's 1x8x8 images"):
        models.check_input(net, torch.rand(5, 1, 8, 8), 10, "m")
    with pytest.raises(InputError, match=r"rejects the data's 3x16x16 images"):
        models.check_input(net, torch.rand(5, 3, 16, 16), 10, "m")
    with pytest.raises(ModelOutputError, match="outputs 10 classes but the data has 7"):
        models.check_input(net, torch.rand(5, 3, 8, 8), 7, "m")
    models.check_input(net, torch.rand(5, 3, 8, 8), 7, "m", exact=False)
    with pytest.raises(ModelOutputError, match=r"returns \(2, 3, 8, 8\)"):
        models.check_input(nn.Identity(), torch.rand(5, 3, 8, 8), 7, "m")


# ----------------------------------------------------------------------------- precision


def test_autocast_runs_in_low_precision_and_returns_fp32() -> None:
    net = zoo.build("digits-mlp", seed=0).eval()
    x = torch.rand(16, 1, 8, 8)
    assert models.autocast(net, "fp32") is net
    low = models.autocast(net, "bf16")
    out = low(x)
    assert out.dtype == torch.float32
    assert not torch.equal(out, net(x))  # really computed in bf16
    assert torch.allclose(out, net(x), atol=0.1)
    assert next(net.parameters()).dtype == torch.float32
    with pytest.raises(ConfigError, match="precision must be one of"):
        models.autocast(net, "fp8")


def test_torchvision_by_name_with_the_users_weights(tmp_path: Path) -> None:
    """torchvision is an optional extra: with it, resnet18 is built with no download and
    filled from the user's file; without it, the error says what to install."""
    d = {"factory": "torchvision.models:resnet18", "kwargs": {"num_classes": 10}}
    try:
        import torchvision
    except ImportError:
        with pytest.raises(FactoryError, match=r"cannot import torchvision.models \(an "
                                               r"optional extra: pip install torchvision"):
            models.build(spec(**d))
        return
    src = torchvision.models.resnet18(num_classes=10).eval()
    w = save_weights(src, tmp_path / "r18.safetensors")
    net = models.build(spec(**d, weights=str(w), normalize={"mean": [0.5] * 3,
                                                             "std": [0.25] * 3}))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(net(x), src((x - 0.5) / 0.25))


