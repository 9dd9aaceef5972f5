"""advlab.evaluation.schema: the check builders, value by value (what each keeps, what each
refuses and how it says so). The whole table is fuzzed key by key in test_config_fuzz.py."""
from __future__ import annotations

import math

import pytest

from advlab.errors import ConfigError
from advlab.evaluation import schema


def test_integer_and_number() -> None:
    steps = schema.integer(1)
    assert steps(3, "steps") == 3 and (steps.kind, steps.lo, steps.hi) == ("int", 1, None)
    for bad in (0, True, 1.5, "3"):
        with pytest.raises(ConfigError, match="^steps must be a positive integer, got "):
            steps(bad, "steps")
    with pytest.raises(ConfigError, match=r"^bits must be an integer in \[1, 8\], got 9$"):
        schema.integer(1, 8)(9, "bits")
    eps = schema.number(0)
    assert eps(1, "eps") == 1.0 and isinstance(eps(1, "eps"), float)
    for bad in (-0.1, math.nan, math.inf, False):
        with pytest.raises(ConfigError, match=r"^eps must be a non-negative number \(finite\)"):
            eps(bad, "eps")
    assert schema.positive(2, "lam") == 2.0
    with pytest.raises(ConfigError, match="^lam must be a positive number, got 0$"):
        schema.positive(0, "lam")


def test_strings_lists_and_tables() -> None:
    norm = schema.string(["linf", "l2"])
    assert norm("l2", "norm") == "l2"
    for bad in ("l1", "", 2):
        with pytest.raises(ConfigError, match="^norm must be "):
            norm(bad, "norm")
    assert schema.boolean(False, "enabled") is False
    with pytest.raises(ConfigError, match="^enabled must be true or false, got 'no'$"):
        schema.boolean("no", "enabled")
    grid = schema.one_or_list(schema.number(0))
    assert grid(0.1, "eps") == [0.1] and grid([0, 0.2], "eps") == [0.0, 0.2]
    with pytest.raises(ConfigError, match=r"^eps\[1\] must be a non-negative number"):
        grid([0.1, -1], "eps")
    names = schema.list_of(schema.string(), of="names")
    with pytest.raises(ConfigError, match="^models must be a list"):
        names("mnist-cnn", "models")                      # a string is not a list of names
    t = schema.table({"n": schema.integer(1), "name": schema.string()}, required=["name"])
    assert t({"name": "x", "n": 2}, "data") == {"name": "x", "n": 2}
    with pytest.raises(ConfigError, match=r"^unknown key\(s\) \['size'\] in data"):
        t({"name": "x", "size": 3}, "data")
    with pytest.raises(ConfigError, match="^data needs name$"):
        t({"n": 2}, "data")
    with pytest.raises(ConfigError, match=r"^data\.n must be a positive integer"):
        t({"name": "x", "n": 0}, "data")
    assert schema.named({"name": schema.string()})("mnist", "data") == {"name": "mnist"}
    assert schema.optional(schema.integer())(None, "seed") is None


def test_run_names_batch_sizes_devices() -> None:
    assert schema.run_name("tour-1") == "tour-1"
    for bad in ("..", "a/b", ".hidden", "x" * (schema.NAME_MAX + 1), "a\0b"):
        with pytest.raises(ConfigError, match="^the run name must be a plain folder name"):
            schema.run_name(bad)
    assert schema.batch_size("auto", "batch_size") == "auto"
    assert schema.batch_size(64, "batch_size") == 64
    with pytest.raises(ConfigError, match="^batch_size must be a positive integer"):
        schema.batch_size("big", "batch_size")
    assert [schema.device(d, "device") for d in ("auto", "cuda:1", "mps")] == \
        ["auto", "cuda:1", "mps"]
    with pytest.raises(ConfigError, match="^device must be auto, cpu, cuda, cuda:N or mps"):
        schema.device("tpu", "device")
