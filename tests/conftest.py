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
# KBM_FUZZ_EXAMPLES_PER_TEST lowers the long profile's budget per test
# (benchmarks/fuzz.py --examples-per-family splits a family's among its tests).
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("KBM_FUZZ_EXAMPLES_PER_TEST", "100000")),
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


# Outcomes of the Keras compatibility harness (tests/keras_compat) in this
# session, in pytest -v's words, for the README table that
# tests/parity_test.py checks: when the whole harness ran earlier in the
# session, its counts come from here instead of a second pytest run.
_COMPAT = "tests/keras_compat/"
_compat_outcomes = {}
_compat_deselected = []


def _outcome_word(report):
    xfail = hasattr(report, "wasxfail")
    if report.failed:
        return "FAILED" if report.when == "call" else "ERROR"
    if report.skipped:
        return "XFAIL" if xfail else "SKIPPED"
    if report.when == "call":
        return "XPASS" if xfail else "PASSED"
    return None


def pytest_runtest_logreport(report):
    if report.nodeid.startswith(_COMPAT):
        word = _outcome_word(report)
        if word is not None:
            _compat_outcomes.setdefault(report.nodeid, []).append(word)


def pytest_deselected(items):
    _compat_deselected.extend(
        i.nodeid for i in items if i.nodeid.startswith(_COMPAT)
    )


@pytest.fixture(scope="session")
def keras_compat_session_outcomes(request):
    """`{nodeid: [outcome, ...]}` of tests/keras_compat in this session.

    None unless every test of the harness was selected, none deselected,
    and all have run before the calling test.
    """
    items = [i for i in request.session.items if i.nodeid.startswith(_COMPAT)]
    if not items or _compat_deselected:
        return None
    if any(i.nodeid not in _compat_outcomes for i in items):
        return None
    return _compat_outcomes
