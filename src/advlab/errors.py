"""Errors with clear messages.

Every bad input that advlab detects raises a subclass of :class:`AdvlabError`,
so callers can catch advlab's complaints without catching programming errors.
"""
from __future__ import annotations


class AdvlabError(Exception):
    """Base class of every error advlab raises on purpose."""


class InputError(AdvlabError, ValueError):
    """Inputs that are not float images in [0, 1] of shape N x C x H x W."""


class LabelError(AdvlabError, ValueError):
    """Labels or targets of the wrong dtype, shape or range."""


class ThreatModelError(AdvlabError, ValueError):
    """An invalid threat model: negative eps, unknown norm, bad step sizes."""


class ModelOutputError(AdvlabError, ValueError):
    """A model whose outputs are not logits (probabilities, NaN, wrong shape)."""


class UnknownNameError(AdvlabError, KeyError):
    """A name (attack, model, data set, defense, detector) that is not registered."""

    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind, self.name, self.available = kind, name, sorted(available)
        super().__init__(f"unknown {kind} {name!r}; available: {', '.join(self.available)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]

    def __reduce__(self) -> tuple[type, tuple[str, str, list[str]]]:
        """Pickles (a worker process's error travels back to the run's driver)."""
        return type(self), (self.kind, self.name, self.available)


class ModelModeError(AdvlabError, RuntimeError):
    """A model in train mode handed to code that must not change it."""


class AttackError(AdvlabError, RuntimeError):
    """An attack that cannot run as configured, or that produced an invalid output."""


class DataError(AdvlabError, FileNotFoundError):
    """Missing or corrupt data files, with what to put where."""


class ModelFileError(AdvlabError, ValueError):
    """Missing, corrupt or untrusted model files."""


class BudgetExceededError(AdvlabError, RuntimeError):
    """A black-box query budget that would be exceeded."""


class NotFittedError(AdvlabError, RuntimeError):
    """A detector or defense used before fit(), or with another model."""


class ParameterError(AdvlabError, TypeError):
    """A keyword argument that a function does not take, or a value of the wrong type for it
    (``steps=2.5``, ``eps="0.1"``)."""


class ConfigError(AdvlabError, ValueError):
    """An experiment configuration (TOML file or dict) that is malformed or inconsistent."""


class ExecutionError(AdvlabError, RuntimeError):
    """Work that cannot be shipped to or run on the workers (an unpicklable model for Ray,
    Ray not installed, a worker lost for good)."""


class EnvironmentMismatchError(AdvlabError, ImportError):
    """The installed packages cannot work together (e.g. a torch wheel built against numpy 1
    beside numpy 2)."""


class FactoryError(AdvlabError, RuntimeError):
    """A user's model factory that cannot be imported, raises, or returns no module."""
