"""`kbm.testing.run_python`: fresh and reused processes."""

import os
import subprocess

import pytest

from keras_bigmodels.testing import last_json_line, run_python

PID = "import json, os; print(json.dumps(os.getpid()))"


def pid(**kwargs):
    return last_json_line(run_python(PID, **kwargs))


def test_fresh_process_per_call_by_default():
    assert pid() != pid()
    assert pid() != os.getpid()


def test_reuse_shares_one_process_per_key_and_env():
    first = pid(reuse="a")
    assert pid(reuse="a") == first
    assert pid(reuse="b") != first
    assert pid(reuse="a", env={"KBM_TEST_VAR": "1"}) != first
    assert pid(reuse="a") == first


def test_reuse_ignores_other_changes_to_the_environment(monkeypatch):
    first = pid(reuse="c")
    monkeypatch.setenv("KBM_TEST_OTHER", "1")
    assert pid(reuse="c") == first


def test_reused_process_keeps_modules_not_names():
    run_python(
        """
        import sys, types
        sys.modules["kbm_test_marker"] = types.ModuleType("kbm_test_marker")
        leftover = 1
        """,
        reuse="state",
    )
    out = run_python(
        """
        import json, sys
        print(json.dumps(
            ["kbm_test_marker" in sys.modules, "leftover" in globals()]
        ))
        """,
        reuse="state",
    )
    assert last_json_line(out) == [True, False]


def test_env_and_stdout():
    code = 'import os; print("a"); print(os.environ.get("KBM_TEST_VAR"))'
    for reuse in (None, "env"):
        out = run_python(code, env={"KBM_TEST_VAR": "x"}, reuse=reuse)
        assert out.split() == ["a", "x"]


@pytest.mark.parametrize("reuse", [None, "errors"])
def test_errors_raise_and_the_process_stays_usable(reuse):
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        run_python("1 / 0", reuse=reuse)
    with pytest.raises(AssertionError):
        run_python("import sys; sys.exit(3)", reuse=reuse)
    assert run_python("import sys; sys.exit(0)", reuse=reuse) == ""
    assert run_python("print(2)", reuse=reuse) == "2\n"


def test_timeout_kills_a_reused_process_and_the_next_call_starts_one():
    first = pid(reuse="slow")
    with pytest.raises(subprocess.TimeoutExpired):
        run_python("import time; time.sleep(30)", timeout=1, reuse="slow")
    assert pid(reuse="slow") != first
