"""advlab.errors: every error is an AdvlabError and the built-in exception callers expect, and
an unknown name lists what exists."""
from __future__ import annotations

import inspect

import pytest

from advlab import errors


def test_each_error_is_an_advlab_error_and_its_builtin() -> None:
    """Callers catch advlab's complaints with AdvlabError, or with the built-in they would
    catch anyway (a bad eps is a ValueError, a missing data file a FileNotFoundError)."""
    builtin = {name: [b for b in cls.__mro__[1:] if b.__module__ == "builtins"][0]
               for name, cls in inspect.getmembers(errors, inspect.isclass)
               if cls.__module__ == errors.__name__ and cls is not errors.AdvlabError}
    assert builtin == {
        "AttackError": RuntimeError, "BudgetExceededError": RuntimeError,
        "ConfigError": ValueError, "DataError": FileNotFoundError,
        "EnvironmentMismatchError": ImportError, "ExecutionError": RuntimeError,
        "FactoryError": RuntimeError, "InputError": ValueError, "LabelError": ValueError,
        "ModelFileError": ValueError, "ModelModeError": RuntimeError,
        "ModelOutputError": ValueError, "NotFittedError": RuntimeError,
        "ParameterError": TypeError, "ThreatModelError": ValueError,
        "UnknownNameError": KeyError,
    }
    for name in builtin:
        assert issubclass(getattr(errors, name), errors.AdvlabError)


def test_unknown_name_lists_what_exists_sorted_and_unquoted() -> None:
    err = errors.UnknownNameError("attack", "pdg", ["pgd", "fgsm", "apgd-ce"])
    assert str(err) == "unknown attack 'pdg'; available: apgd-ce, fgsm, pgd"  # no KeyError quotes
    assert (err.kind, err.name, err.available) == ("attack", "pdg", ["apgd-ce", "fgsm", "pgd"])
    with pytest.raises(KeyError):
        raise err


def test_errors_survive_pickling() -> None:
    # a worker process's error travels back to the driver by pickle
    import pickle

    from advlab.errors import InputError, UnknownNameError

    err = pickle.loads(pickle.dumps(UnknownNameError("attack", "pgdd", ["pgd", "fgsm"])))
    assert isinstance(err, UnknownNameError) and err.available == ["fgsm", "pgd"]
    assert str(err) == "unknown attack 'pgdd'; available: fgsm, pgd"
    assert str(pickle.loads(pickle.dumps(InputError("bad x")))) == "bad x"
