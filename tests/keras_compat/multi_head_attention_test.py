"""Keras's multi_head_attention_test with kbm's class in place of Keras's."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

globals().update(
    _harness.load(
        "keras.src.layers.attention.multi_head_attention_test",
        {"layers.MultiHeadAttention": kbm.layers.MultiHeadAttention},
    )
)
