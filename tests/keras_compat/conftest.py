"""Collection hooks of the Keras compatibility harness.

Registers the markers Keras's own tests use and attaches the expectations
of `expectations.py` to the collected Keras tests.
"""

from tests.keras_compat import expectations


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
