"""Keras's `optimizers.lion_test` with `kbm`'s Lion."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

KERAS_MODULE = "keras.src.optimizers.lion_test"
SUBSTITUTIONS = {"Lion": kbm.optimizers.Lion}

globals().update(_harness.load(KERAS_MODULE, SUBSTITUTIONS))
