"""Keras's `optimizers.adamw_test` with `kbm`'s AdamW."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

globals().update(
    _harness.load(
        "keras.src.optimizers.adamw_test",
        {"AdamW": kbm.optimizers.AdamW},
    )
)
