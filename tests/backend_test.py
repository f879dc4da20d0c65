"""The Keras line follows TensorFlow's own TF_USE_LEGACY_KERAS switch."""

import os

from keras_bigmodels import backend


def test_backend_follows_tensorflow_switch():
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") in ("1", "true", "True")
    assert backend.IS_LEGACY_KERAS == legacy
    assert backend.keras.__name__ == ("tf_keras" if legacy else "keras")
