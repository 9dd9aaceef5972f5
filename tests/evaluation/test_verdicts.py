"""advlab.evaluation.verdicts: a finding's status, and the verdict with its worst-case figure over
every attack at one eps, by hand on a few examples."""
from __future__ import annotations

from typing import Any

import numpy as np

from advlab.evaluation import verdicts


def test_finding_status() -> None:
    cells = {"k": {"ladder": [{"findings": {"gradients": "settled"}},
                              {"findings": {"gradients": "open"}}]},
             "s": {"ladder": [{"findings": {"gradients": "settled"}}]},
             "adaptive": {"ladder": None}}
    assert verdicts.finding_status({"check": "gradients", "cell": "k"}, cells) == "open"
    assert verdicts.finding_status({"check": "gradients", "cell": "gone"}, cells) == "open"
    assert verdicts.finding_status({"check": "gradients"}, cells) == "open"
    assert verdicts.finding_status({"check": "softmax", "cell": "s"}, cells) == "open"
    assert verdicts.finding_status({"name": "gradients", "cell": "s"}, cells) == "settled"
    assert verdicts.finding_status({"check": "gradients", "cell": "adaptive"}, cells) == \
        "settled by its adaptive attack"


class Rows:
    """The one Store method verdicts() reads: a cell's per-example rows."""

    def __init__(self, rows: dict[str, dict[str, list[int]]]) -> None:
        self.rows = rows

    def examples(self, key: str) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.rows[key].items()}


def _cell(key: str, eps: float, robust: float, adaptive: bool = False, **kw: Any) -> dict:
    return {"key": key, "model": "m", "defense": "none", "eps": eps, "params": {},
            "adaptive": adaptive, "robust_accuracy": robust, **kw}


def test_worst_case_per_example_and_the_verdict() -> None:
    store = Rows({
        # correct and robust on 0, 1; fooled on 2; misclassified 3
        "a": {"idx": [0, 1, 2, 3], "label": [0, 0, 0, 0], "clean_pred": [0, 0, 0, 1],
              "adv_pred": [0, 0, 1, 1]},
        # robust on 1, 2; fooled on 0; image 3 not attacked
        "b": {"idx": [0, 1, 2], "label": [0, 0, 0], "clean_pred": [0, 0, 0],
              "adv_pred": [1, 0, 0]},
        "c": {"idx": [0, 1], "label": [0, 1], "clean_pred": [0, 1], "adv_pred": [0, 1]},
    })
    cells = [_cell("a", 0.3, 0.5), _cell("b", 0.3, 2 / 3, adaptive=True,
                                         ladder=[{"findings": {"gradients": "settled"},
                                                  "winner": "bpda"}]),
             _cell("c", 0.1, 1.0),
             {**_cell("l2", 0.3, 0.0), "params": {"norm": "l2"}}]  # not an Linf cell: left out
    sanity = [{"model": "m", "defense": "none", "eps": 0.3,
               "findings": [{"check": "gradients", "level": "warning", "cell": "b"},
                            {"check": "softmax", "level": "info"}]}]
    at3, at1 = verdicts.verdicts(store, cells, sanity)
    # images 0, 1, 2 were attacked by both: only image 1 survives both
    assert at3 == {"model": "m", "defense": "none", "eps": 0.3, "verdict": "settled",
                   "robust_accuracy": 1 / 3, "n": 3, "naive_robust_accuracy": 0.5,
                   "attacks": 2, "findings": {"gradients": "settled"}, "ladder": ["bpda"]}
    assert at1 == {"model": "m", "defense": "none", "eps": 0.1, "verdict": "unchecked",
                   "robust_accuracy": 1.0, "n": 2, "naive_robust_accuracy": 1.0,
                   "attacks": 1, "findings": {}, "ladder": None}
    sanity[0]["findings"][0]["cell"] = "gone"      # the finding's attack did not run
    assert verdicts.verdicts(store, cells, sanity)[0]["verdict"] == "unreliable"
    sanity[0]["findings"] = [{"check": "softmax", "level": "info"}]
    assert verdicts.verdicts(store, cells, sanity)[0]["verdict"] == "ok"
