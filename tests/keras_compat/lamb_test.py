"""Keras's `optimizers.lamb_test` with `kbm`'s Lamb."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

KERAS_MODULE = "keras.src.optimizers.lamb_test"
SUBSTITUTIONS = {"Lamb": kbm.optimizers.Lamb}

globals().update(_harness.load(KERAS_MODULE, SUBSTITUTIONS))
