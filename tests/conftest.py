"""Test configuration: quiet TensorFlow and report the Keras line in use.

The suite runs once per Keras line: `make test` runs pytest with Keras 3 and
again with `TF_USE_LEGACY_KERAS=1` (tf-keras).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from keras_bigmodels import backend  # noqa: E402


def pytest_report_header(config):
    return f"keras_bigmodels: Keras line {backend.KERAS_LINE} " + (
        f"(keras {backend.KERAS_VERSION})"
    )


@pytest.fixture
def keras():
    return backend.keras
