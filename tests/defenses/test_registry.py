"""The defense registry (defenses/registry.py): each name's taxonomy, names registered once and
"none" reserved."""
from __future__ import annotations

import pytest

from advlab import defenses
from advlab.defenses import registry
from advlab.errors import ConfigError


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
