"""Robustness curves in the runner: a [[curves]] table becomes curve cells whose rows hold
each example's smallest adversarial radius, stored, sharded and resumed like any cell, the
same inline and on processes (on Ray: tests/evaluation/test_execute.py), and summarised in
results.json; never above the bounded grid."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.evaluation.test_execute import assert_same, counting_writes, setup, stored

from advlab.evaluation import execute, runner
from advlab.evaluation.config import config_from_dict
from advlab.evaluation.store import Store

CURVE = {"grid": [0.2, 0.05], "params": {"steps": 5}, "bounded_params": {"steps": 5}}


def config(**over: Any) -> Any:
    """Two models, undefended and behind bit-depth reduction, one curve each, and PGD at the
    curve's grid radii on model a (the bounded attack it must never be above)."""
    d = {"name": "e", "batch_size": 8, "models": ["a", "b"], "data": {"name": "x", "n": 32},
         "defenses": ["none", {"name": "transformed", "params": {
             "transforms": [{"name": "BitDepth", "bits": 2}]}}],
         "attacks": [{"name": "apgd-ce", "eps": [0.05, 0.2], "params": {"steps": 5},
                      "models": ["a"], "defenses": ["none"]}],
         "curves": [CURVE], "report": {"gallery": 2, "eps": 0.2},
         "sanity": {"enabled": False}, "adaptive": {"enabled": False}}
    return config_from_dict({**d, **over})


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    models, data, _ = setup()
    root = tmp_path_factory.mktemp("inline")
    runner.run(config(), root=root, models=models, data=data, executor=execute.Inline())
    return stored(root), root


def _curves(root: Path) -> list[dict[str, Any]]:
    from advlab.evaluation import results
    with Store(root / "advlab.sqlite") as s:
        return [c for c in results.collect(s, "e")["cells"] if "curve" in c]


def test_a_curve_cell_per_model_and_defense_with_its_radii(inline_run) -> None:  # noqa: ANN001
    _, root = inline_run
    curves = _curves(root)
    assert sorted((c["model"], c["defense"].split(":")[0]) for c in curves) == [
        ("a", "none"), ("a", "transformed"), ("b", "none"), ("b", "transformed")]
    with Store(root / "advlab.sqlite") as s:
        for c in curves:
            ex = s.examples(c["key"])
            radius = ex["linf"]
            succ = ex["success"].astype(bool)
            assert np.isinf(radius[~succ]).all() and np.isfinite(radius[succ]).all()
            wrong = ex["clean_pred"] != ex["label"]
            assert (radius[wrong] == 0).all()
            assert c["curve"]["grid"] == [0.05, 0.2]
            want = [float((radius > e).mean()) for e in (0.05, 0.2)]  # float32-exact radii
            assert c["curve"]["accuracy"] == pytest.approx(want)
            assert c["curve"]["dense"][0] == pytest.approx(c["clean_accuracy"])
            assert c["curve"]["robust"] == pytest.approx(c["robust_accuracy"])
            assert np.all(np.diff(c["curve"]["dense"]) <= 0)
            assert c["label"] == "curve fab + apgd-ce"


def test_the_curve_is_never_above_the_bounded_grid(inline_run) -> None:  # noqa: ANN001
    from advlab.evaluation import results
    _, root = inline_run
    with Store(root / "advlab.sqlite") as s:
        cells = results.collect(s, "e")["cells"]
    (curve,) = [c for c in cells if "curve" in c and c["model"] == "a" and
                c["defense"] == "none"]
    grid = {c["eps"]: c["robust_accuracy"] for c in cells if c["attack"] == "apgd-ce"}
    assert sorted(grid) == [0.05, 0.2]
    for e, acc in zip(curve["curve"]["grid"], curve["curve"]["accuracy"], strict=True):
        assert acc <= grid[e], (e, acc, grid[e])
    assert curve["curve"]["accuracy"][0] < grid[0.05]  # FAB's radii lower it there


def test_processes_and_shards_store_what_inline_stores(inline_run, tmp_path: Path  # noqa: ANN001
                                                       ) -> None:
    models, data, _ = setup()
    runner.run(config(shard_size=16), root=tmp_path / "p", models=models, data=data,
               executor=execute.Processes(2))
    assert_same(inline_run[0], stored(tmp_path / "p"))


def test_an_interrupted_curve_resumes_from_its_stored_shards(inline_run, tmp_path: Path  # noqa: ANN001
                                                             ) -> None:
    models, data, _ = setup()
    cfg = config(shard_size=16, attacks=[], defenses=["none"],
                 curves=[{**CURVE, "models": ["a"]}])
    seen: list[int] = []

    def stop(p: runner.Progress) -> None:
        if p.event == "shard":
            seen.append(p.batch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, root=tmp_path, models=models, data=data, executor=execute.Inline(),
                   progress=stop)
    with counting_writes() as computed:
        rec = runner.run(cfg, root=tmp_path, models=models, data=data,
                         executor=execute.Inline())
    assert seen == [16] and computed == [16]  # the second shard only
    ((key, _),) = rec["cells"]
    assert_same(inline_run[0][key], stored(tmp_path)[key])


