"""Keras's grouped_query_attention_test with kbm's class in place of Keras's."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

KERAS_MODULE = "keras.src.layers.attention.grouped_query_attention_test"
SUBSTITUTIONS = {
    "layers.GroupedQueryAttention": kbm.layers.GroupedQueryAttention
}

globals().update(_harness.load(KERAS_MODULE, SUBSTITUTIONS))
