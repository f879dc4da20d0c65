"""Keras's `distillation.distiller_test` with `kbm`'s Distiller."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

globals().update(
    _harness.load(
        "keras.src.distillation.distiller_test",
        {"Distiller": kbm.distillation.Distiller},
    )
)
