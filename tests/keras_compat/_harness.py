"""Runs Keras's own test modules with kbm's classes in place of Keras's.

Keras 3 ships its tests inside the wheel (`keras/src/**/*_test.py`). For
each module listed in `tests/keras_compat/*_test.py`, `load` executes a
private copy of the module file (Keras's own module object is left alone),
then rebinds, in that copy's globals only, the names the tests use to reach
the class under test:

- `"Lion"`: a module-level name (`from keras.src.optimizers.lion import
  Lion`) is replaced by kbm's class;
- `"layers.Dense"`: an attribute of an imported module
  (`from keras.src import layers`) is served by a proxy module that returns
  kbm's class for that attribute and forwards every other one to the real
  module.

The copy's `unittest.TestCase` classes are returned to the calling test
file, whose globals pytest collects. Expected failures and skips are
attached at collection time (`conftest.py`) from the lists in
`expectations.py`.

The tf-keras wheel ships no tests: on that line (`TF_USE_LEGACY_KERAS=1`)
nothing is loaded and the calling file is skipped; the twin tests under
`tests/layers`, `tests/optimizers` and `tests/distillation` stand there.
"""

import importlib.util
import inspect
import os
import types
import unittest

import pytest

from keras_bigmodels.backend import IS_LEGACY_KERAS

# The Keras release these lists were written against. Another one may
# add, rename or drop tests; the harness still runs, but the counts in the
# README's parity table are for this one.
KERAS_VERSION = "3.15.1"


class _ModuleProxy(types.ModuleType):
    """A module whose listed attributes are overridden."""

    def __init__(self, module, overrides):
        super().__init__(module.__name__, module.__doc__)
        self._module = module
        self._overrides = dict(overrides)

    def __getattr__(self, name):
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._module, name)


def _keras_test_file(module_name):
    """The file of Keras test module `module_name` (not imported)."""
    spec = importlib.util.find_spec(module_name.rsplit(".", 1)[0])
    path = os.path.join(
        spec.submodule_search_locations[0],
        module_name.rsplit(".", 1)[1] + ".py",
    )
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Keras test module {module_name} not found at {path}: this "
            "keras installation ships no tests."
        )
    return path


def _substitute(namespace, substitutions):
    """Rebinds `substitutions` ({"name" or "module.attr": obj}) in place."""
    by_module = {}
    for target, obj in substitutions.items():
        if "." in target:
            module_name, attr = target.split(".", 1)
            by_module.setdefault(module_name, {})[attr] = obj
        else:
            if target not in namespace:
                raise LookupError(
                    f"the Keras test module has no name {target!r} to "
                    "substitute (was it renamed?)"
                )
            namespace[target] = obj
    for module_name, overrides in by_module.items():
        module = namespace.get(module_name)
        if not isinstance(module, types.ModuleType):
            raise LookupError(
                f"the Keras test module has no module {module_name!r} whose "
                "attributes could be substituted"
            )
        for attr in overrides:
            if not hasattr(module, attr):
                raise LookupError(f"{module.__name__} has no {attr!r}")
        namespace[module_name] = _ModuleProxy(module, overrides)


def load(module_name, substitutions):
    """Loads Keras test module `module_name` with `substitutions` applied.

    Args:
        module_name: A dotted Keras test module, e.g.
            `"keras.src.optimizers.lion_test"`.
        substitutions: `{name: kbm_object}`; see the module docstring.

    Returns:
        A dict `{class name: TestCase class}` for the caller's globals. On
        tf-keras the calling module is skipped instead.
    """
    if IS_LEGACY_KERAS:
        pytest.skip(
            "Keras 3's own tests (the tf-keras wheel ships none)",
            allow_module_level=True,
        )
    path = _keras_test_file(module_name)
    private_name = "kbm_keras_compat." + module_name
    spec = importlib.util.spec_from_file_location(private_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _substitute(vars(module), substitutions)
    return {
        name: obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and issubclass(obj, unittest.TestCase)
        and obj.__module__ == private_name
    }
