"""Argument checks shared by kbm's layers, optimizers, models and explain.

Each raises `ValueError("<name> must be ... Received: <name>=<value>")`,
Keras's wording; numeric checks let tensors, schedules and callables pass.
"""

import numbers


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


def check_non_negative(name, value):
    """A numeric `value` must be >= 0."""
    if is_number(value) and value < 0:
        raise ValueError(f"{name} must be >= 0. Received: {name}={value}")


def check_learning_rate(learning_rate):
    """A numeric learning rate must be >= 0 (schedules/tensors pass)."""
    check_non_negative("learning_rate", learning_rate)


def check_beta(name, value):
    """A numeric beta must be in [0, 1)."""
    if is_number(value) and not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1). Received: {name}={value}")
