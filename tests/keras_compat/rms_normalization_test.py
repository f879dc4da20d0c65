"""Keras's rms_normalization_test with kbm's class in place of Keras's."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

KERAS_MODULE = "keras.src.layers.normalization.rms_normalization_test"
SUBSTITUTIONS = {"layers.RMSNormalization": kbm.layers.RMSNormalization}

globals().update(_harness.load(KERAS_MODULE, SUBSTITUTIONS))
