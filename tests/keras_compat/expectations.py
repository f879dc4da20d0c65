"""Which Keras tests are expected not to pass with kbm's classes, and why.

Keys are `"<harness file stem>::<TestCase>::<test>"`; a trailing `*` matches
the parameterized variants of one test. A Keras test that is listed here and
passes is reported as XPASS: delete its entry.
"""

import fnmatch

import pytest

# Tests that inspect Keras-private internals kbm's class legitimately does
# differently. Each entry carries its reason.
KERAS_PRIVATE = {}

# Keras tests kbm's class is known to fail, each with its reason; run as
# strict expected failures. None today.
KNOWN_FAILURES = {}


def _lookup(table, key):
    for pattern, reason in table.items():
        if fnmatch.fnmatchcase(key, pattern):
            return reason
    return None


def marker_for(nodeid):
    """The pytest marker for the Keras test `nodeid`, or None."""
    key = nodeid.rsplit("/", 1)[-1].replace(".py::", "::", 1)
    reason = _lookup(KERAS_PRIVATE, key)
    if reason is not None:
        return pytest.mark.skip(reason=f"inspects Keras internals: {reason}")
    reason = _lookup(KNOWN_FAILURES, key)
    if reason is not None:
        return pytest.mark.xfail(reason=reason, strict=True)
    return None
