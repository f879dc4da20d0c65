"""Runs check_<family>.py modules without pytest (a fallback for bare images).

Usage: python -m gpu_harness.run_checks [--collect-only] check_x.py [...]

When pytest is importable this simply calls pytest. Otherwise a small stand-in
module named `pytest` is installed that understands what the check modules
use: mark.parametrize (stacked, pytest.param), mark.skipif / pytestmark,
skip, importorskip, raises, and plain function fixtures (generators too,
set up per test). Every test_* function is called with each parameter
combination; the exit status is 1 when any test failed.
"""

import contextlib
import importlib
import importlib.util
import inspect
import itertools
import os
import sys
import time
import traceback
import types


class Skipped(Exception):
    pass


class _Param:
    def __init__(self, values, id=None):
        self.values = values
        self.id = id


class _Mark:
    def __init__(self, name, args, kwargs):
        self.name = name
        self.args = args
        self.kwargs = kwargs

    def __call__(self, fn):
        fn.__dict__.setdefault("_kbm_marks", []).insert(0, self)
        return fn


class _MarkFactory:
    def __getattr__(self, name):
        def make(*args, **kwargs):
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return _Mark(name, (), {})(args[0])
            return _Mark(name, args, kwargs)

        return make


def _skip(msg="", allow_module_level=False):
    raise Skipped(msg)


def _importorskip(name, minversion=None, reason=None):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise Skipped(reason or f"could not import {name}: {e}") from None


@contextlib.contextmanager
def _raises(expected, match=None):
    try:
        yield
    except expected as e:
        if match is not None:
            import re

            if not re.search(match, str(e)):
                raise AssertionError(
                    f"{e!r} does not match {match!r}"
                ) from None
        return
    raise AssertionError(f"DID NOT RAISE {expected}")


def _fixture(fn=None, **kwargs):
    def mark(f):
        f._kbm_fixture = True
        return f

    return mark(fn) if callable(fn) else mark


def install_stub():
    stub = types.ModuleType("pytest")
    stub.mark = _MarkFactory()
    stub.skip = _skip
    stub.skip.Exception = Skipped
    stub.importorskip = _importorskip
    stub.raises = _raises
    stub.fixture = _fixture
    stub.param = lambda *values, id=None, marks=(): _Param(values, id)
    stub.fail = lambda msg="": (_ for _ in ()).throw(AssertionError(msg))
    sys.modules["pytest"] = stub


def _skip_reason(marks):
    for m in marks:
        if m.name == "skipif" and m.args and m.args[0]:
            return m.kwargs.get("reason", "skipif")
        if m.name == "skip":
            return m.kwargs.get("reason", "skip")
    return None


def _cases(fn):
    """(id, kwargs) for every parametrize combination of `fn`."""
    axes = []
    for m in getattr(fn, "_kbm_marks", []):
        if m.name != "parametrize":
            continue
        names, values = m.args[0], m.args[1]
        names = (
            [n.strip() for n in names.split(",")]
            if isinstance(names, str)
            else list(names)
        )
        axis = []
        for v in values:
            vid = None
            if isinstance(v, _Param):
                vid, v = v.id, v.values
                v = v if len(names) > 1 else v[0]
            vals = tuple(v) if len(names) > 1 else (v,)
            axis.append(
                (vid or "-".join(map(str, vals)), dict(zip(names, vals)))
            )
        axes.append(axis)
    for combo in itertools.product(*axes):
        kwargs = {}
        for _, kw in combo:
            kwargs.update(kw)
        yield "-".join(i for i, _ in combo), kwargs


def _call(fn, kwargs, module):
    teardown = []
    for name in inspect.signature(fn).parameters:
        if name in kwargs:
            continue
        fix = getattr(module, name, None)
        if not getattr(fix, "_kbm_fixture", False):
            raise TypeError(f"unknown fixture {name!r}")
        value = _call(fix, {}, module)
        if inspect.isgenerator(value):
            teardown.append(value)
            value = next(value)
        kwargs = {**kwargs, name: value}
    try:
        return fn(**kwargs)
    finally:
        for gen in teardown:
            with contextlib.suppress(StopIteration):
                next(gen)


def run_file(path, collect_only=False):
    """Runs one module's tests; returns (passed, failed, skipped)."""
    name = os.path.splitext(os.path.basename(path))[0]
    counts = [0, 0, 0]
    try:
        spec = importlib.util.spec_from_file_location(
            f"gpu_harness.{name}", path
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    except Skipped as e:
        print(f"{path}: SKIPPED (module): {e}")
        return 0, 0, 1
    except Exception:
        print(f"{path}: ERROR importing\n{traceback.format_exc()}")
        return 0, 1, 0
    module_marks = getattr(module, "pytestmark", [])
    if not isinstance(module_marks, list):
        module_marks = [module_marks]
    reason = _skip_reason(module_marks)
    if reason:
        print(f"{path}: SKIPPED (module): {reason}")
        return 0, 0, 1
    for attr in sorted(vars(module)):
        fn = getattr(module, attr)
        if not (attr.startswith("test") and inspect.isfunction(fn)):
            continue
        reason = _skip_reason(getattr(fn, "_kbm_marks", []))
        for case_id, kwargs in _cases(fn):
            label = (
                f"{path}::{attr}[{case_id}]" if case_id else (f"{path}::{attr}")
            )
            if reason:
                counts[2] += 1
                print(f"SKIPPED {label}: {reason}")
                continue
            if collect_only:
                print(f"collected {label}")
                continue
            start = time.time()
            try:
                _call(fn, kwargs, module)
            except Skipped as e:
                counts[2] += 1
                print(f"SKIPPED {label}: {e}")
            except Exception:
                counts[1] += 1
                print(f"FAILED {label}\n{traceback.format_exc()}")
            else:
                counts[0] += 1
                print(f"PASSED {label} ({time.time() - start:.2f} s)")
    return tuple(counts)


def main(argv):
    collect_only = "--collect-only" in argv
    argv = [a for a in argv if a != "--collect-only"]
    if collect_only:
        argv = ["--collect-only", *argv]
    try:
        import pytest  # noqa: F401
    except ImportError:
        pass
    else:
        if os.environ.get("KBM_RUN_CHECKS_STUB") != "1":
            return pytest.main(["-q", "-p", "no:cacheprovider", *argv])
    install_stub()
    total = [0, 0, 0]
    for path in argv:
        if path == "--collect-only":
            continue
        for i, n in enumerate(run_file(path, collect_only)):
            total[i] += n
    print(f"{total[0]} passed, {total[1]} failed, {total[2]} skipped")
    return 1 if total[1] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
