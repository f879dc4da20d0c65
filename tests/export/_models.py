"""Small models for the export tests, built with kbm layers (fused kernels
where the library is available)."""

import numpy as np

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras

TOKENS = np.array(
    [[5, 6, 7, 0, 0, 0], [1, 2, 3, 4, 5, 6], [3, 3, 0, 0, 0, 0]], "int32"
)
MASK = (TOKENS != 0).astype("int32")


def dense_classifier(name="features", seed=0):
    """One float input (named `name`, or Keras's automatic name for None),
    3 logits from a layer named "logits"."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,), name=name)
    h = kbm.layers.FusedDense(16, activation="gelu")(inputs)
    h = kbm.layers.LayerNormalization()(h)
    h = kbm.layers.FusedDense(16, activation="gelu_tanh")(h)
    h = kbm.layers.RMSNormalization()(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


def encoder_classifier(seed=0):
    """`token_ids` + `padding_mask` -> TransformerEncoder -> 3 logits."""
    keras.utils.set_random_seed(seed)
    token_ids = keras.Input((6,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((6,), dtype="int32", name="padding_mask")
    h = kbm.layers.TokenAndPositionEmbedding(10, 6, 16, name="embedding")(
        token_ids
    )
    h = kbm.layers.TransformerEncoder(32, 4)(h, padding_mask=padding_mask)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(
        [token_ids, padding_mask], keras.layers.Dense(3, name="logits")(h)
    )


def token_classifier(seed=0):
    """One `token_ids` input, padding masked from the ids (mask_zero)."""
    keras.utils.set_random_seed(seed)
    token_ids = keras.Input((6,), dtype="int32", name="token_ids")
    h = kbm.layers.TokenAndPositionEmbedding(
        10, 6, 16, mask_zero=True, name="embedding"
    )(token_ids)
    h = kbm.layers.TransformerEncoder(32, 4)(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(token_ids, keras.layers.Dense(2, name="logits")(h))


def float_batch(n=4, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 12)).astype("f4")
