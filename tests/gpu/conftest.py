"""tests/gpu/ runs the TF ops on a GPU: skipped where TensorFlow sees none."""

from pathlib import Path

import pytest
import tensorflow as tf

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # A conftest hook sees the whole session's items: mark only ours.
    if tf.config.list_physical_devices("GPU"):
        return
    skip = pytest.mark.skip(reason="TensorFlow sees no GPU")
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


@pytest.fixture
def gpu():
    """The first GPU, as a device name for tf.device."""
    return tf.config.list_logical_devices("GPU")[0].name
