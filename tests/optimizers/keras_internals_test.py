"""Every Keras-private optimizer member kbm hooks still exists.

A Keras upgrade that renames one fails here, not deep inside a step.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from keras_bigmodels.optimizers import _keras_internals

HOOKED = _keras_internals.HOOKED


def _built(optimizer):
    variable = (
        tf.Variable(np.ones(3, np.float32))
        if IS_LEGACY_KERAS
        else keras.Variable(np.ones(3, np.float32))
    )
    optimizer.build([variable])
    return optimizer, variable


@pytest.mark.parametrize("name", HOOKED["methods"])
def test_private_method_exists(name):
    assert callable(getattr(keras.optimizers.Optimizer, name, None)), name


@pytest.mark.parametrize("name", HOOKED["attributes"])
def test_private_attribute_exists_on_built_optimizer(name):
    optimizer, _ = _built(keras.optimizers.SGD(0.1))
    assert hasattr(optimizer, name), name


@pytest.mark.parametrize("path", HOOKED["tf"])
def test_tf_internal_exists(path):
    assert callable(functools.reduce(getattr, path.split("."), tf)), path


@pytest.mark.parametrize(
    "cls, names",
    [
        (keras.optimizers.AdamW, ("momentums", "velocities")),
        (keras.optimizers.Lion, ("momentums",)),
    ]
    + (
        []
        if IS_LEGACY_KERAS
        else [(keras.optimizers.Lamb, ("momentums", "velocities"))]
    ),
)
def test_keras_slot_lists_are_found(cls, names):
    optimizer, variable = _built(cls())
    for name in names:
        slots = _keras_internals.slots(optimizer, name)
        index = _keras_internals.variable_index(optimizer, variable)
        assert tuple(slots[index].shape) == (3,), name


def test_variable_index_of_kbm_optimizer():
    optimizer, variable = _built(kbm.optimizers.AdamW())
    assert _keras_internals.variable_index(optimizer, variable) == 0
    assert _keras_internals.uses_weight_decay(optimizer, variable)


def test_no_private_keras_access_outside_the_internals_module():
    import pathlib
    import re

    package = pathlib.Path(kbm.optimizers.__file__).parent
    pattern = re.compile(
        r"\.(" + "|".join(HOOKED["methods"] + HOOKED["attributes"]) + r")\b"
        r"|tf\.__internal__"
    )
    offenders = [
        f"{path.name}:{i}: {line.strip()}"
        for path in sorted(package.glob("*.py"))
        if path.name != "_keras_internals.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and "def " not in line
    ]
    assert not offenders, offenders
