"""End to end on the command line: a user's own 3 x 32 x 32 network (a .py file, safetensors
weights this session trains) on folder:, cifar10 and npz: data; advlab attack with the same
spec; a zoo model and the same weights through factory + weights give identical cells; bad
input ends in one line and exit code 2."""
from __future__ import annotations

import base64
import io
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from advlab import zoo
from advlab.cli import cli
from advlab.evaluation.store import Store
from userkit import Payload, Project, config


def invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


def run_config(tmp_path: Path, text: str, *extra: str) -> tuple[int, str, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "my.toml"
    path.write_text(text)
    root = tmp_path / "runs"
    code, out = invoke("run", str(path), "--root", str(root), "--no-progress", *extra)
    return code, out, root


def colour_share(png: bytes) -> float:
    """The fraction of pixels whose channels differ by more than 40 of 255 (0 for grey)."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return float(((a.max(2) - a.min(2)) > 40).mean())


def gallery_pngs(page: str) -> list[bytes]:
    section = page.split('<section id="gallery">')[1].split("</section>")[0]
    return [base64.b64decode(m) for m in re.findall(r'base64,([^"]+)"', section)]


@pytest.mark.parametrize("fmt", ["folder", "cifar10", "npz"])
def test_run_user_model_on_each_format(user_project: Project, tmp_path: Path,
                                       fmt: str) -> None:
    p = user_project
    data = {"folder": f"folder:{p.folder}", "cifar10": "cifar10", "npz": f"npz:{p.npz}"}[fmt]
    text = config(p, data, f"user-{fmt}")
    if fmt == "cifar10":
        text = text.replace("fit_n = 50", f'fit_n = 50\nroot = "{p.cifar}"')
    code, out, root = run_config(tmp_path, text)
    assert code == 0, out
    res = json.loads((root / f"user-{fmt}" / "results.json").read_text())
    cells = res["cells"]
    assert len(cells) == 4 and all(c["n"] == 20 for c in cells)
    assert min(c["clean_accuracy"] for c in cells) >= 0.9  # the trained net, right labels
    pgd = {c["eps"]: c["robust_accuracy"] for c in cells if c["attack"] == "pgd"}
    assert pgd[0.3] < pgd[0.03] and pgd[0.3] <= 0.2
    assert res["run"]["env"]["precision"] == "fp32"
    if fmt != "cifar10":  # cifar10 names its own classes
        assert res["run"]["env"]["classes"] == list(p.classes)
    page = (root / f"user-{fmt}" / "report.html").read_text()
    shots = gallery_pngs(page)
    assert shots and all(colour_share(png) > 0.05 for png in shots)


def test_attack_command_takes_the_same_spec(user_project: Project, tmp_path: Path) -> None:
    p = user_project
    code, out = invoke("attack", "pgd", "--model", f"{p.net}:build", "--weights",
                       str(p.weights), "--kwargs", '{"num_classes": 10}', "--data",
                       f"folder:{p.folder}", "--eps", "0.3", "--param", "steps=5", "-n", "20",
                       "--out", str(tmp_path / "g.png"))
    assert code == 0, out
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines()
                if re.search(r"\S\s{2,}\S", line))
    assert rows["images"] == f"20 (folder:{p.folder})"
    assert float(rows["clean accuracy"].rstrip("%")) >= 90
    assert float(rows["robust accuracy"].rstrip("%")) <= 20
    assert colour_share((tmp_path / "g.png").read_bytes()) > 0.05
    (tmp_path / "my.toml").write_text(config(p, f"folder:{p.folder}", "same"))
    code, again = invoke("attack", "pgd", "--config", str(tmp_path / "my.toml"), "--model",
                         "my-net", "--eps", "0.3", "--param", "steps=5", "-n", "20", "--out",
                         str(tmp_path / "g2.png"), "--batch-size", "auto")
    assert code == 0, again
    same = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in again.splitlines()
                if re.search(r"\S\s{2,}\S", line))
    for k in ("images", "clean accuracy", "robust accuracy", "success rate"):
        assert same[k] == rows[k], k
    code, out = invoke("attack", "pgd", "--config", str(tmp_path / "my.toml"), "--model", "x")
    assert code == 2 and "has no [[models]] named 'x'; it has my-net" in out
    code, out = invoke("attack", "pgd", "--batch-size", "big")
    assert code == 2 and 'neither a positive integer nor "auto"' in out


def test_zoo_model_and_factory_with_its_weights_give_identical_cells(tmp_path: Path) -> None:
    weights = zoo.cache_path("digits-mlp")
    zoo.load("digits-mlp")  # trained and cached on first use
    text = f"""
name = "same"
batch_size = 40
[data]
name = "digits"
n = 60
[[models]]
name = "digits-mlp"
[[models]]
name = "mine"
factory = "advlab.zoo:digits_mlp"
weights = "{weights}"
[[attacks]]
name = "fgsm"
eps = [0.1, 0.3]
[[attacks]]
name = "pgd"
eps = 0.1
params = {{ steps = 5 }}
[sanity]
enabled = false
"""
    code, out, root = run_config(tmp_path, text)
    assert code == 0, out
    with Store(root / "advlab.sqlite") as store:
        run = store.run("same")
        by_model: dict[str, dict] = {}
        for key, spec in run["cells"]:
            by_model.setdefault(spec["model"]["name"], {})[
                (spec["attack"], spec["params"].get("eps"))] = store.examples(key)
    assert by_model["mine"].keys() == by_model["digits-mlp"].keys()
    for cell, rows in by_model["digits-mlp"].items():
        for k in ("clean_pred", "adv_pred", "success", "linf"):
            assert np.array_equal(rows[k], by_model["mine"][cell][k]), (cell, k)
    res = json.loads((root / "same" / "results.json").read_text())
    acc = {(c["model"], c["label"], c["eps"]): c["robust_accuracy"] for c in res["cells"]}
    assert {k[1:]: v for k, v in acc.items() if k[0] == "mine"} == \
        {k[1:]: v for k, v in acc.items() if k[0] == "digits-mlp"}


def test_a_user_model_is_built_once_per_run(tmp_path: Path) -> None:
    """The check before any cell builds the user's model; the run uses that one."""
    calls = tmp_path / "calls.txt"
    net = tmp_path / "counted.py"
    net.write_text(f"""
from advlab import zoo


def build():
    with open({str(calls)!r}, "a") as f:
        f.write("built\\n")
    return zoo.digits_mlp()
""")
    text = f"""
name = "once"
[data]
name = "digits"
n = 20
[[models]]
name = "mine"
factory = "{net}:build"
weights = "{zoo.cache_path("digits-mlp")}"
[[attacks]]
name = "fgsm"
eps = 0.1
[sanity]
enabled = false
"""
    zoo.load("digits-mlp")  # trained and cached on first use
    code, out, _ = run_config(tmp_path, text)
    assert code == 0, out
    assert calls.read_text().splitlines() == ["built"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_input_is_one_line_and_exit_2(user_project: Project, tmp_path: Path) -> None:
    p = user_project
    good = config(p, f"folder:{p.folder}", "bad")
    (tmp_path / "raising.py").write_text("def build(**kw):\n    raise RuntimeError('boom')\n")
    marker = tmp_path / "pwned"
    (tmp_path / "w.pt").write_bytes(pickle.dumps({"0.weight": Payload(marker)}))
    (tmp_path / "mono").mkdir()
    folder_grey = tmp_path / "grey"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (folder_grey / split / c).mkdir(parents=True)
            for i in range(10):  # as many as the run's n = 20
                Image.fromarray(np.zeros((32, 32), np.uint8)).save(
                    folder_grey / split / c / f"{i}.png")
    cases = {
        "factory not importable": (f'"{p.net}:build"', '"no_such_pkg.nets:build"',
                                   "cannot import no_such_pkg"),
        "factory raising": (f'"{p.net}:build"', f'"{tmp_path / "raising.py"}:build"',
                            "raised RuntimeError: boom"),
        "wrong architecture": ("num_classes = 10", "num_classes = 10, width = 8",
                               "'0.weight' has shape (16, 3, 3, 3) in the file but "
                               "(8, 3, 3, 3) in the model"),
        "pickle as weights": (f'"{p.weights}"', f'"{tmp_path / "w.pt"}"',
                              "never unpickles"),
        "class count": (f'num_classes = 10 }}\nweights = "{p.weights}"', "num_classes = 7 }",
                        "outputs 7 classes but the data has 10"),
        "shape rejected": (f'"folder:{p.folder}"', f'"folder:{folder_grey}"',
                           "rejects the data's 1x32x32 images"),
    }
    if not torch.cuda.is_available():
        cases["cuda without CUDA"] = ("workers = 1", 'workers = 1\ndevice = "cuda"',
                                      "CUDA is not available")
    for what, (old, new, message) in cases.items():
        assert old in good, what
        code, out, _ = run_config(tmp_path / what.replace(" ", "-"), good.replace(old, new))
        assert code == 2, (what, out)
        errors = [line for line in out.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and message in errors[0], (what, out)
        assert out.strip().splitlines()[-1] == errors[0] and "Traceback" not in out
    assert not marker.exists()


def test_bf16_run_is_stored_apart_and_judged_in_fp32(user_project: Project,
                                                     tmp_path: Path) -> None:
    text = config(user_project, f"npz:{user_project.npz}", "prec")
    code, out, root = run_config(tmp_path, text)
    assert code == 0, out
    fp32 = json.loads((root / "prec" / "results.json").read_text())
    code, out, root = run_config(tmp_path, text, "--precision", "bf16")
    assert code == 0, out
    bf16 = json.loads((root / "prec" / "results.json").read_text())
    assert bf16["run"]["env"]["precision"] == "bf16"
    assert {c["key"] for c in bf16["cells"]}.isdisjoint(c["key"] for c in fp32["cells"])
    for a, b in zip(fp32["cells"], bf16["cells"], strict=True):
        assert a["clean_accuracy"] == b["clean_accuracy"]  # the clean side is fp32 in both
        assert abs(a["robust_accuracy"] - b["robust_accuracy"]) <= 0.15
