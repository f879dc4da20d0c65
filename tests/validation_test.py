"""keras_bigmodels._validation: the shared argument checks."""

import numpy as np
import pytest

from keras_bigmodels import _validation


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_positive_int_accepted_and_returned_as_int(value):
    result = _validation.check_positive_int("units", value)
    assert result == int(value) and type(result) is int


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "3", None])
def test_positive_int_rejected_with_keras_wording(value):
    with pytest.raises(ValueError, match=rf"Received: units={value!r}"):
        _validation.check_positive_int("units", value)


def test_numeric_checks_let_non_numbers_pass():
    _validation.check_beta("beta_1", lambda: 2.0)  # Callables pass.
    _validation.check_learning_rate(object())  # Schedules pass.
    with pytest.raises(ValueError, match=r"beta_1 must be in \[0, 1\)"):
        _validation.check_beta("beta_1", 1.0)
    with pytest.raises(ValueError, match="learning_rate must be >= 0"):
        _validation.check_learning_rate(-1e-3)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        _validation.check_non_negative("epsilon", -1)
