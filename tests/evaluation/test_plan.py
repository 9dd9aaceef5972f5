"""advlab.evaluation.plan: the cells a configuration asks for (eps defaults, scopes, adaptive
cells)."""
from __future__ import annotations

import advlab
from advlab.evaluation.plan import plan_cells
from testkit import BITDEPTH, tiny_config


def test_missing_eps_takes_the_attack_default() -> None:
    cfg = tiny_config(attacks=[{"name": "pgd-l2"}])
    (cell, *_) = plan_cells(cfg, {"a": "1", "b": "2"}, "d")
    assert cell.eps == advlab.attacks.get("pgd-l2").eps == 2.0


def test_scope_restricts_models_and_defenses() -> None:
    cfg = tiny_config(defenses=["none", {"name": "transformed", "params": {"transforms": [
        {"name": "BitDepth", "bits": 1}]}}], attacks=[
        {"name": "fgsm", "eps": 0.1, "defenses": ["none"]},
        {"name": "pgd", "eps": 0.1, "models": ["b"]}], adaptive={"enabled": False})
    cells = plan_cells(cfg, {"a": "1", "b": "2"}, "d")
    assert [(c.model, c.defense.name, c.attack) for c in cells] == [
        ("a", "none", "fgsm"), ("b", "none", "fgsm"), ("b", "none", "pgd"),
        ("b", "transformed", "pgd")]


def test_adaptive_cells_can_be_disabled() -> None:
    cfg = tiny_config(defenses=["none", BITDEPTH], attacks=[{"name": "fgsm", "eps": 0.3}],
                      adaptive={"enabled": False})
    kinds = {c.kind for c in plan_cells(cfg, {"a": "1", "b": "2"}, "d")}
    assert kinds == {"attack"}
