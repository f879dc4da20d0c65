"""Keras's `distillation.distiller_test` with `kbm`'s Distiller."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

KERAS_MODULE = "keras.src.distillation.distiller_test"
SUBSTITUTIONS = {"Distiller": kbm.distillation.Distiller}

globals().update(_harness.load(KERAS_MODULE, SUBSTITUTIONS))
