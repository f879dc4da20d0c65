"""Argument checks shared by kbm's layers, optimizers, models and explain.

Each raises `ValueError("<name> must be ... Received: <name>=<value>")`,
Keras's wording. The optimizer checks (`check_learning_rate`, `check_beta`,
`check_non_negative`) let tensors, variables, schedules and callables
pass, and refuse what a config can hold but no hyperparameter can be: a
string, a bool, a list or dict, None. The layer checks (`check_rate`,
`check_positive_number`, `check_bool`, `check_axis`) take plain Python
values only, as configs hold them. A `.keras` file whose config.json was
edited therefore fails in the constructor, naming the field.
"""

import math
import numbers

# What a config can hold that is never a numeric hyperparameter.
_NOT_NUMERIC = (str, bytes, bool, list, tuple, dict, set, type(None))


def is_number(value):
    """A real Python/NumPy number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name, value):
    """Raises unless `value` is an int > 0 (not a bool); returns it as int."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(
            f"{name} must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def check_numeric(name, value, allow_none=False):
    """Raises unless `value` can be a numeric hyperparameter: a number,
    tensor, variable, schedule or callable (not a string, bool, container
    or None)."""
    if allow_none and value is None:
        return
    if isinstance(value, _NOT_NUMERIC):
        raise ValueError(f"{name} must be a number. Received: {name}={value!r}")


def check_non_negative(name, value, allow_none=False):
    """A numeric `value` must be >= 0."""
    check_numeric(name, value, allow_none)
    if is_number(value) and not value >= 0:
        raise ValueError(f"{name} must be >= 0. Received: {name}={value}")


def check_learning_rate(learning_rate):
    """A numeric learning rate must be >= 0 (schedules/tensors pass)."""
    check_non_negative("learning_rate", learning_rate)


def check_beta(name, value):
    """A numeric beta must be in [0, 1)."""
    check_numeric(name, value)
    if is_number(value) and not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1). Received: {name}={value}")


def check_rate(name, value, allow_none=False):
    """A Python number in [0, 1) (a dropout rate)."""
    if allow_none and value is None:
        return
    if not is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"{name} must be in [0, 1)"
            f"{' or None' if allow_none else ''}. Received: {name}={value!r}"
        )


def check_positive_number(name, value, allow_none=False):
    """A finite Python number > 0."""
    if allow_none and value is None:
        return
    if not is_number(value) or not math.isfinite(value) or not value > 0:
        raise ValueError(
            f"{name} must be a finite number > 0"
            f"{' or None' if allow_none else ''}. Received: {name}={value!r}"
        )


def check_epsilon(name, value):
    """A finite Python number >= 0."""
    if not is_number(value) or not math.isfinite(value) or not value >= 0:
        raise ValueError(
            f"{name} must be a finite number >= 0. Received: {name}={value!r}"
        )


def check_bool(name, value):
    """True or False (not a string such as "yes", not 0/1)."""
    if not isinstance(value, bool):
        raise ValueError(
            f"{name} must be True or False. Received: {name}={value!r}"
        )


def check_axis(name, value):
    """An int, or a non-empty list/tuple of ints (no bools)."""
    axes = value if isinstance(value, (list, tuple)) else [value]
    if not axes or not all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool)
        for a in axes
    ):
        raise ValueError(
            f"{name} must be an int or a non-empty list of ints. "
            f"Received: {name}={value!r}"
        )
