"""Keras's rms_normalization_test with kbm's class in place of Keras's."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

globals().update(
    _harness.load(
        "keras.src.layers.normalization.rms_normalization_test",
        {"layers.RMSNormalization": kbm.layers.RMSNormalization},
    )
)
