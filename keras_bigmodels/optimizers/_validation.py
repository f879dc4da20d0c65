"""Hyperparameter checks shared by kbm's optimizers."""

import numbers


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_learning_rate(learning_rate):
    """A numeric learning rate must be >= 0 (schedules/tensors pass)."""
    if _is_number(learning_rate) and learning_rate < 0:
        raise ValueError(
            "learning_rate must be >= 0. "
            f"Received: learning_rate={learning_rate}"
        )


def check_beta(name, value):
    """A numeric beta must be in [0, 1)."""
    if _is_number(value) and not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1). Received: {name}={value}")


def check_non_negative(name, value):
    if _is_number(value) and value < 0:
        raise ValueError(f"{name} must be >= 0. Received: {name}={value}")


def one_minus(value):
    """1 - value, in Python double when value is a number (as Keras does)."""
    if callable(value):
        value = value()
    return 1.0 - value


def value_of(x):
    """Calls a callable hyperparameter (Keras allows them)."""
    return x() if callable(x) else x
