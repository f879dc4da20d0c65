"""Keras's `layers.core.dense_test` with `kbm`'s FusedDense (for Dense)."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

KERAS_MODULE = "keras.src.layers.core.dense_test"
SUBSTITUTIONS = {"layers.Dense": kbm.layers.FusedDense}

globals().update(_harness.load(KERAS_MODULE, SUBSTITUTIONS))
