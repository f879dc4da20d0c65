"""Keras's `optimizers.adamw_test` with `kbm`'s AdamW."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

KERAS_MODULE = "keras.src.optimizers.adamw_test"
SUBSTITUTIONS = {"AdamW": kbm.optimizers.AdamW}

globals().update(_harness.load(KERAS_MODULE, SUBSTITUTIONS))
