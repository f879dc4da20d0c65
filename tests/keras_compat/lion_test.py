"""Keras's `optimizers.lion_test` with `kbm`'s Lion."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

globals().update(
    _harness.load(
        "keras.src.optimizers.lion_test",
        {"Lion": kbm.optimizers.Lion},
    )
)
