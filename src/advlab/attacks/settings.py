"""Declarative attack settings: a keyword-only frozen dataclass per family, validated once.

A family writes its settings once, as a subclass of :class:`Settings` (a frozen, keyword-only
dataclass: the fields are the settings, with their types and defaults) whose :meth:`check`
validates them, raising :mod:`advlab.errors`. An attack names that class as ``Settings`` and
says how it differs from it::

    class GradientAttack(Attack):
        Settings = GradientSettings              # eps, norm, steps, alpha, ..., seed, source

    class PGD(GradientAttack):
        preset = {"steps": 40, "random_start": True}        # its own defaults

    class FGSM(GradientAttack):
        fixed = {"steps": 1, "early_stop": False, ...}       # settings it does not offer

    class MIFGSM(GradientAttack):
        Settings = MomentumSettings              # GradientSettings + decay
        fixed = {"alpha": None, "random_start": False, "restarts": 1}

:func:`declare` (run for every such class by :class:`~advlab.attacks.attack.Attack`) gives the
attack its ``__init__`` (``eps`` positional, every other setting keyword-only, with the
signature and annotations that ``inspect``, :func:`advlab.attacks.get` and the docs read), one
read-only attribute per setting (``attack.steps``) and its repr. The validated record is
``attack.settings``; :meth:`Configured.replace` makes a new attack with some settings changed.
``preset`` and ``fixed`` are inherited and merged down the class tree (EOT-PGD is PGD with
``steps`` 100).

Values a setting derives from others (eps's default from the norm, the query-estimating
sources from their parameters) are resolved in :meth:`Settings.check` with :meth:`Settings.
resolve`, so the record holds what the attack runs with.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from advlab.errors import AttackError, ParameterError, ThreatModelError
from advlab.threat import DEFAULT_EPS
from advlab.validation import describe_type, fits_type


class Settings:
    """Base of the settings records: every subclass is made a frozen, keyword-only
    dataclass; on construction each value is checked against its annotation
    (:class:`~advlab.errors.ParameterError`), then :meth:`check` runs."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)

    def __post_init__(self) -> None:
        hints = type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not fits_type(value, hints[f.name]):
                raise ParameterError(f"{type(self).__name__}: {f.name} must be "
                                     f"{describe_type(hints[f.name])}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Validate the ranges (and resolve derived values); raise advlab.errors."""

    def resolve(self, name: str, value: Any) -> None:
        """Set a derived value while checking (the record is frozen afterwards)."""
        object.__setattr__(self, name, value)


class BallSettings(Settings):
    """An eps-ball: its norm (one of ``norms``) and radius eps >= 0 (default: the norm's,
    :data:`advlab.threat.DEFAULT_EPS`)."""

    norms: ClassVar[tuple[str, ...]] = tuple(DEFAULT_EPS)

    eps: float | None = None
    norm: str = "linf"

    def check(self) -> None:
        one_of("norm", self.norm, self.norms)
        if self.eps is None:
            self.resolve("eps", DEFAULT_EPS[self.norm])
        at_least(0, eps=self.eps)


class TargetedSettings(Settings):
    """Settings of a targeted-only attack: how the base picks a target when the caller
    gives none ("random", "least_likely" or "next"; :func:`advlab.attacks.base.choose_target`).
    """

    target_selection: str = "random"

    def check(self) -> None:
        one_of("target selection", self.target_selection, ("random", "least_likely", "next"))


def positive(**values: float | None) -> None:
    """Raise ThreatModelError unless every given value is None or > 0."""
    bad = {k: v for k, v in values.items() if v is not None and not v > 0}
    if bad:
        raise ThreatModelError(", ".join(f"{k} must be positive, got {v}"
                                         for k, v in bad.items()))


def at_least(low: float, **values: float | None) -> None:
    """Raise ThreatModelError unless every given value is None or >= low."""
    bad = {k: v for k, v in values.items() if v is not None and v < low}
    if bad:
        bound = "non-negative" if low == 0 else f">= {low}"
        raise ThreatModelError(", ".join(f"{k} must be {bound}, got {v}"
                                         for k, v in bad.items()))


def one_of(what: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ThreatModelError unless value is one of ``allowed``."""
    if value not in allowed:
        raise ThreatModelError(f"unknown {what} {value!r}; available: {', '.join(allowed)}")


_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a settings class (cached)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


class Configured:
    """What :func:`declare` gives an attack with ``Settings``: the record, ``replace`` and
    the repr of its offered settings."""

    Settings: ClassVar[type[Settings] | None] = None
    #: this attack's own defaults for settings of its ``Settings``
    preset: ClassVar[Mapping[str, Any]] = {}
    #: settings of ``Settings`` this attack does not offer, with the value it runs with
    fixed: ClassVar[Mapping[str, Any]] = {}
    #: settings that may be passed by position, in order
    positional: ClassVar[tuple[str, ...]] = ("eps",)
    settings: Settings

    def configure(self, **values: Any) -> None:
        """Validate ``values`` (every offered setting) once, into ``self.settings``."""
        assert self.Settings is not None
        self.settings = self.Settings(**{**values, **_merged(type(self), "fixed")})

    def replace(self, **changes: Any) -> Any:
        """A copy of this attack with some settings changed (validated again); the
        attack's own fixed settings may be changed here (``eot`` sets an APGD's source). An
        attack without ``Settings`` gets the changes as attributes of the copy."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        if self.Settings is None:
            new.__dict__.update(changes)
        else:
            new.settings = dataclasses.replace(self.settings, **changes)
        return new


def declare(cls: type) -> None:
    """Give attack class ``cls`` its ``__init__``, its setting attributes and its
    signature from ``cls.Settings``, ``preset``, ``fixed`` and ``positional``.

    Raises:
        AttackError: a preset or fixed name that is not a setting.
    """
    settings_cls = cls.Settings
    names = [f.name for f in dataclasses.fields(settings_cls)]
    preset, fixed = _merged(cls, "preset"), _merged(cls, "fixed")
    unknown = (set(preset) | set(fixed)) - set(names)
    if unknown:
        raise AttackError(f"{cls.__name__}: {', '.join(sorted(unknown))} are not settings of "
                          f"{settings_cls.__name__}")
    for name in names:
        if name not in cls.__dict__ and not isinstance(getattr(cls, name, None), _Setting):
            setattr(cls, name, _Setting(name))
    if "__init__" not in cls.__dict__:
        cls.__init__ = _init(cls, _signature(cls, settings_cls, preset, fixed))


class _Setting:
    """A read-only attribute of the attack: the setting of that name in its record."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(obj.settings, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{type(obj).__name__}.{self.name} is a frozen setting; use "
                             f".replace({self.name}=...)")


def _merged(cls: type, attr: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        out.update(base.__dict__.get(attr, {}))
    return out


def _signature(cls: type, settings_cls: type, preset: Mapping[str, Any],
               fixed: Mapping[str, Any]) -> inspect.Signature:
    hints = type_hints(settings_cls)
    params = []
    for f in dataclasses.fields(settings_cls):
        if f.name in fixed:
            continue
        default = preset.get(f.name, f.default)
        if default is dataclasses.MISSING:
            default = inspect.Parameter.empty
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if f.name in cls.positional \
            else inspect.Parameter.KEYWORD_ONLY
        params.append(inspect.Parameter(f.name, kind, default=default,
                                        annotation=hints[f.name]))
    params.sort(key=lambda p: (p.kind != p.POSITIONAL_OR_KEYWORD,
                               cls.positional.index(p.name) if p.name in cls.positional else 0))
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return inspect.Signature([self_param, *params], return_annotation=None)


def _init(cls: type, sig: inspect.Signature) -> Any:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["self"]
        self.configure(**values)

    __init__.__signature__ = sig  # type: ignore[attr-defined]
    __init__.__annotations__ = {p.name: p.annotation for p in sig.parameters.values()
                                if p.annotation is not inspect.Parameter.empty}
    __init__.__annotations__["return"] = None
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    __init__.__doc__ = f"Settings: see {cls.__name__} and {cls.Settings.__name__}."
    return __init__
