"""tests/gpu/ runs the TF ops on a GPU: skipped where TensorFlow sees none."""

import pytest
import tensorflow as tf

_HERE = __file__.rsplit("/", 1)[0]


def pytest_collection_modifyitems(config, items):
    if tf.config.list_physical_devices("GPU"):
        return
    skip = pytest.mark.skip(reason="TensorFlow sees no GPU")
    for item in items:
        if str(item.path).startswith(_HERE):
            item.add_marker(skip)


@pytest.fixture
def gpu():
    """The first GPU, as a device name for tf.device."""
    return tf.config.list_logical_devices("GPU")[0].name
