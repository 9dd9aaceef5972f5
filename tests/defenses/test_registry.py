"""The defense registry (defenses/registry.py): each name's taxonomy, names registered once and
"none" reserved."""
from __future__ import annotations

import pytest

from advlab import defenses
from advlab.defenses import registry
from advlab.errors import ConfigError, ParameterError, UnknownNameError


def test_taxonomy_of_every_defense() -> None:
    got = {name: (t.kind, t.trained) for name, t in defenses.available().items()}
    assert got == {"adversarial-training": ("training", True),
                   "distillation": ("training", True),
                   "transformed": ("transformation", False)}
    assert all(t.adaptive for t in defenses.available().values())  # each names its attack


@pytest.mark.parametrize("name", ["distillation", "none"])
def test_a_name_is_registered_once_and_none_is_reserved(name: str) -> None:
    before = defenses.available()
    with pytest.raises(ConfigError, match=f"defense name '{name}' registered twice"):
        registry.register(name, kind="training", trained=True, adaptive="pgd")(object)
    assert defenses.available() == before


def test_defenses_by_name() -> None:
    assert set(defenses.available()) == {"adversarial-training", "distillation", "transformed"}
    assert defenses.available()["distillation"].trained
    assert not defenses.available()["transformed"].trained
    recipe = defenses.get("transformed", transforms=[{"name": "BitDepth", "bits": 2}])
    assert isinstance(recipe, defenses.registry.Transforms)
    with pytest.raises(UnknownNameError, match="available: .*BitDepth"):
        defenses.get("transformed", transforms=[{"name": "Blurry"}])
    with pytest.raises(UnknownNameError, match="adversarial-training, distillation, none"):
        defenses.get("jpeg")


def test_recipes_check_their_parameters_when_made() -> None:
    """A defense's parameters are checked by get(), before any training."""
    with pytest.raises(ParameterError, match="transform 'BitDepth': bits must be"):
        defenses.get("transformed", transforms=[{"name": "BitDepth", "bits": "two"}])
    with pytest.raises(ConfigError, match="transforms must be a list of tables"):
        defenses.get("transformed", transforms="BitDepth")
    with pytest.raises(ParameterError, match="'distillation' has no parameter 'temp'"):
        defenses.get("distillation", temp=10)
    with pytest.raises(ParameterError, match=r"\(trades\): .*epochs must be"):
        defenses.get("adversarial-training", method="trades", epochs=1.5)
    with pytest.raises(UnknownNameError, match="adversarial training method 'free'"):
        defenses.get("adversarial-training", method="free")
    with pytest.raises(UnknownNameError, match="unknown attack 'nope'"):
        defenses.get("adversarial-training", attack="nope")
