"""Keras's `layers.core.dense_test` with `kbm`'s FusedDense (for Dense)."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

globals().update(
    _harness.load(
        "keras.src.layers.core.dense_test",
        {"layers.Dense": kbm.layers.FusedDense},
    )
)
