"""Keras's multi_head_attention_test with kbm's class in place of Keras's."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

KERAS_MODULE = "keras.src.layers.attention.multi_head_attention_test"
SUBSTITUTIONS = {"layers.MultiHeadAttention": kbm.layers.MultiHeadAttention}

globals().update(_harness.load(KERAS_MODULE, SUBSTITUTIONS))
