"""Keras's `optimizers.lamb_test` with `kbm`'s Lamb."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

globals().update(
    _harness.load(
        "keras.src.optimizers.lamb_test",
        {"Lamb": kbm.optimizers.Lamb},
    )
)
