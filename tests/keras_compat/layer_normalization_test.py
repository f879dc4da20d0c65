"""Keras's layer_normalization_test with kbm's class in place of Keras's."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

KERAS_MODULE = "keras.src.layers.normalization.layer_normalization_test"
SUBSTITUTIONS = {"layers.LayerNormalization": kbm.layers.LayerNormalization}

globals().update(_harness.load(KERAS_MODULE, SUBSTITUTIONS))
