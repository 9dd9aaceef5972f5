"""advlab.evaluation.results: results.json, strict JSON of the run's cells and verdicts."""
from __future__ import annotations

import json

import torch

from advlab.evaluation import results
from advlab.evaluation.store import Store


def test_results_json_schema(tiny_run) -> None:  # noqa: ANN001
    root = tiny_run[0]
    with Store(root / "advlab.sqlite") as s:
        path = results.write_results(root / "t" / "results.json", results.collect(s, "t"))
    doc = json.loads(path.read_text())      # strict JSON: NaN would not parse back as null
    assert doc["schema"] == "advlab.results/1"
    assert set(doc) == {"schema", "run", "cells", "missing", "verdicts"}
    assert len(doc["verdicts"]) == 6                        # (model, eps): one cell each
    for v in doc["verdicts"]:                               # sanity off: unchecked
        (c,) = [c for c in doc["cells"] if (c["model"], c["eps"]) == (v["model"], v["eps"])]
        assert v["verdict"] == "unchecked" and v["robust_accuracy"] == c["robust_accuracy"]
    assert {"name", "config", "env", "started", "finished", "wall_s"} <= set(doc["run"])
    assert doc["run"]["env"]["torch"] == torch.__version__
    assert len(doc["cells"]) == 6
    for c in doc["cells"]:
        assert {"key", "model", "defense", "attack", "eps", "params", "seed", "n",
                "clean_accuracy", "robust_accuracy", "success_rate", "median_norms",
                "mean_ssim", "wrong_confidence", "transfer", "fragility", "detectors",
                "wall_s"} <= set(c)
        assert 0 <= c["robust_accuracy"] <= c["clean_accuracy"] <= 1
        assert set(c["median_norms"]) == {"l0", "l1", "l2", "linf"}
        assert set(c["fragility"]) == {"shift:1", "shift:2", "noise:0.05"}
        assert list(c["transfer"]) == ["b" if c["model"] == "a" else "a"]
    assert "NaN" not in path.read_text()
