"""Test configuration: quiet TensorFlow and report the Keras line in use.

The suite runs once per Keras line: `make test` runs pytest with Keras 3 and
again with `TF_USE_LEGACY_KERAS=1` (tf-keras).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from keras_bigmodels import backend  # noqa: E402


# Property-based tests: a small fixed budget in the default run ("ci"), a long
# one on demand ("long": make fuzz). Select with --hypothesis-profile=NAME or
# KBM_HYPOTHESIS_PROFILE.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
settings.register_profile(
    "long",
    max_examples=100_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
settings.load_profile(os.environ.get("KBM_HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    return f"keras_bigmodels: Keras line {backend.KERAS_LINE} " + (
        f"(keras {backend.KERAS_VERSION})"
    )


@pytest.fixture
def keras():
    return backend.keras
