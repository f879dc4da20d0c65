"""Collection hooks of the Keras compatibility harness.

Registers the markers Keras's own tests use, skips the harness on tf-keras
(its wheel ships no tests), and attaches the expectations of
`expectations.py` to the collected Keras tests.
"""

from keras_bigmodels.backend import IS_LEGACY_KERAS
from tests.keras_compat import expectations

if IS_LEGACY_KERAS:
    collect_ignore_glob = ["*_test.py"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "requires_trainable_backend: Keras's marker (TensorFlow trains)",
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = expectations.marker_for(item.nodeid)
        if marker is not None:
            item.add_marker(marker)
