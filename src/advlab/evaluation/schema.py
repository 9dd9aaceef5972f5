"""The shape of a run configuration: every key, its type and its range, in one table.

:data:`CONFIG` describes the TOML file (or the mapping :func:`advlab.evaluation.run` is
given) key by key; :func:`~advlab.evaluation.config.config_from_dict` checks a mapping
against it before it builds anything, so a wrong type, a value out of range, a NaN, an empty
name, a string where a list belongs or an unknown key in any table is one
:class:`~advlab.errors.ConfigError` naming the key, before any work is done. A new key is a
new line of :data:`CONFIG`.

A check is a function ``(value, where) -> value`` (the value as the configuration keeps
it, or :class:`~advlab.errors.ConfigError`); the small builders below make them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from advlab.errors import ConfigError
from advlab.evaluation.rungs import RUNGS
from advlab.models import PRECISIONS

#: where the shards of a run are computed (see advlab.evaluation.execute)
EXECUTORS = ("processes", "inline", "ray")

Check = Callable[[Any, str], Any]

#: the longest run name (it names a folder and rows of the results database)
NAME_MAX = 100


def _tagged(check: Check, kind: str, **about: Any) -> Check:
    """``check`` with what it accepts written on it (``kind``: int, number, bool, str, list,
    table, params; ``lo``, ``hi``, ``fields``, ``item``), so that tests can walk the table."""
    vars(check).update(kind=kind, **about)
    return check


def _fail(where: str, wants: str, v: Any) -> ConfigError:
    return ConfigError(f"{where} must be {wants}, got {v!r}")


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """An integer (not a bool, not 1.5) in [lo, hi]."""
    wants = {(0, None): "a non-negative integer", (1, None): "a positive integer"}.get(
        (lo, hi), "an integer" + _range(lo, hi))

    def check(v: Any, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or \
                (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _fail(where, wants, v)
        return v
    return _tagged(check, "int", lo=lo, hi=hi)


def number(lo: float | None = None, hi: float | None = None) -> Check:
    """A finite number (not a bool, not NaN) in [lo, hi], kept as a float."""
    wants = "a non-negative number (finite)" if (lo, hi) == (0, None) else \
        "a finite number" + _range(lo, hi)

    def check(v: Any, where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _fail(where, wants, v)
        return float(v)
    return _tagged(check, "number", lo=lo, hi=hi)


def positive(v: Any, where: str) -> float:
    """A finite number > 0 (not a bool, not NaN), kept as a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise _fail(where, "a positive number", v)
    return float(v)


_tagged(positive, "number", lo=0, hi=None)


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    return f" >= {lo}" if lo is not None else (f" <= {hi}" if hi is not None else "")


def boolean(v: Any, where: str) -> bool:
    """true or false (not "no", not 0)."""
    if not isinstance(v, bool):
        raise _fail(where, "true or false", v)
    return v


_tagged(boolean, "bool")


def string(choices: Sequence[str] | None = None) -> Check:
    """A non-empty string without NUL, one of ``choices`` when given."""
    wants = "one of " + ", ".join(choices) if choices else "a non-empty string"

    def check(v: Any, where: str) -> str:
        if not isinstance(v, str) or not v.strip() or "\0" in v or \
                (choices is not None and v not in choices):
            raise _fail(where, wants, v)
        return v
    return _tagged(check, "str", choices=choices)


def run_name(v: Any, where: str = "the run name") -> str:
    """A run name: a plain folder name (no path separators, no leading dot, no control
    characters or surrounding spaces, at most :data:`NAME_MAX` characters), as both
    ``--name`` and ``name`` are."""
    if not isinstance(v, str) or not v.strip() or v != v.strip() or len(v) > NAME_MAX or \
            v.startswith(".") or any(c in "/\\" or not c.isprintable() for c in v):
        raise _fail(where, f"a plain folder name of at most {NAME_MAX} printable characters "
                    "without surrounding spaces, '/', '\\' or a leading '.'", v)
    return v


_tagged(run_name, "str", choices=None)


def list_of(item: Check, nonempty: bool = False, of: str = "") -> Check:
    """A list (a string is not a list) of items that pass ``item`` (``of``: what they are,
    for the message)."""
    wants = ("a non-empty list" if nonempty else "a list") + (f" of {of}" if of else "")

    def check(v: Any, where: str) -> list[Any]:
        if not isinstance(v, list) or (nonempty and not v):
            raise _fail(where, wants, v)
        return [item(e, f"{where}[{i}]") for i, e in enumerate(v)]
    return _tagged(check, "list", item=item)


def one_or_list(item: Check) -> Check:
    """A value or a non-empty list of values, kept as a list."""
    many = list_of(item, nonempty=True)
    return _tagged(lambda v, where: many(v, where) if isinstance(v, list) else [item(v, where)],
                   "one_or_list", item=item)


def optional(item: Check) -> Check:
    """None (a value left out in Python; TOML has no null) or an ``item``."""
    return _tagged(lambda v, where: None if v is None else item(v, where), "optional",
                   item=item)


def table(fields: dict[str, Check], required: Sequence[str] = ()) -> Check:
    """A table with only the keys of ``fields`` (each checked), ``required`` ones present.
    None values stand for keys left out; ``where`` "" is the whole configuration."""
    allowed = ", ".join(fields)

    def check(v: Any, where: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise _fail(where or "the configuration", "a table", v)
        unknown = [k for k in v if k not in fields]
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {where or 'the configuration'}; "
                              f"allowed: {allowed}")
        missing = [k for k in required if v.get(k) is None]
        if missing:
            raise ConfigError(f"{where} needs {', '.join(missing)}")
        return {k: fields[k](e, f"{where}.{k}" if where else k)
                for k, e in v.items() if e is not None}
    return _tagged(check, "table", fields=fields)


def named(fields: dict[str, Check]) -> Check:
    """A name (a string) or a table with a ``name`` (see :func:`table`)."""
    full = table({"name": string(), **fields}, required=("name",))
    return _tagged(lambda v, where: full({"name": v} if isinstance(v, str) else v, where),
                   "table", fields=vars(full)["fields"])


def params(v: Any, where: str) -> dict[str, Any]:
    """A table of keyword arguments (their values are checked by what they build)."""
    if not isinstance(v, dict):
        raise _fail(where, "a table of parameters (params = { steps = 10 })", v)
    return dict(v)


_tagged(params, "params")


def batch_size(v: Any, where: str) -> int | str:
    """A positive integer, or "auto" (halved on CUDA out-of-memory, see the runner)."""
    return v if v == "auto" else _POSITIVE(v, where)


_POSITIVE = integer(1)
_tagged(batch_size, "int", lo=1, hi=None)


def device(v: Any, where: str) -> str:
    """auto, cpu, cuda, cuda:N or mps; whether it is there is checked when the run starts."""
    kind, sep, index = v.partition(":") if isinstance(v, str) else ("", "", "")
    if kind not in ("cpu", "cuda", "auto", "mps") or \
            sep and (kind != "cuda" or not index.isdigit()):
        raise _fail(where, "auto, cpu, cuda, cuda:N or mps", v)
    return v


_tagged(device, "str", choices=None)

_SCOPE = list_of(string(), of="names")

#: every key of a run configuration (see :mod:`advlab.evaluation.config` for their meaning)
CONFIG: Check = table({
    "name": run_name,
    "seed": integer(0, 2**32 - 1),
    "batch_size": batch_size,
    "device": device,
    "precision": string(tuple(PRECISIONS)),
    "workers": integer(0, 1024),
    "shard_size": integer(1),
    "execution": table({"executor": string(EXECUTORS), "address": string(),
                        "cpus": positive, "gpus": positive}),
    "data": table({"name": string(), "split": string(("train", "test")), "n": integer(1),
                   "train_split": string(("train", "test")), "fit_n": integer(1),
                   "root": string(), "resize": one_or_list(integer(1)),
                   "channels": integer(1, 3), "subset": string(("first", "random", "stratified"))}),
    "models": list_of(named({"file": string(), "arch": string(), "factory": string(),
                             "weights": string(), "kwargs": params,
                             "normalize": table({"mean": one_or_list(number()),
                                                 "std": one_or_list(number(0))},
                                                required=("mean", "std"))})),
    "defenses": list_of(named({"params": params}), nonempty=True),
    "detectors": list_of(named({"params": params})),
    "attacks": list_of(named({
        "eps": one_or_list(optional(number(0))), "params": params,
        "target": string(("random", "least_likely", "next")), "n": integer(1),
        "models": _SCOPE, "defenses": _SCOPE, "detectors": _SCOPE})),
    "curves": list_of(table({
        "grid": list_of(number(0), nonempty=True, of="radii"), "minnorm": string(),
        "params": params, "bounded": string(), "bounded_params": params, "norm": string(),
        "n": integer(1), "models": _SCOPE, "defenses": _SCOPE}, required=("grid",))),
    "probes": table({"shifts": list_of(integer(-1024, 1024)),
                     "noise": list_of(number(0, 1))}),
    "report": table({"gallery": integer(0, 1000), "eps": number(0)}),
    "sanity": table({"enabled": boolean, "max_examples": integer(1),
                     "blackbox_queries": integer(1), "ladder_steps": integer(1),
                     "ladder_square_queries": integer(0), "ladder_label_queries": integer(0),
                     "ladder_distill_epochs": integer(0),
                     "ladder_rungs": list_of(string(RUNGS), of="ladder rungs")}),
    "adaptive": table({"enabled": boolean, "steps": integer(1), "lam": number(0)}),
})
