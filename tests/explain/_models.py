"""Small models whose attributions are known, shared by the explain and
callbacks tests."""

import numpy as np

from keras_bigmodels.backend import keras

W = np.array(
    [
        [1.0, -2.0, 0.5],
        [0.5, 1.0, -1.0],
        [-1.5, 0.0, 2.0],
        [2.0, 0.5, 0.0],
        [0.0, -1.0, 1.0],
    ],
    np.float32,
)
B = np.array([0.1, -0.2, 0.3], np.float32)


def linear_model():
    """y = x @ W + B: 5 features, 3 outputs."""
    i = keras.Input((5,))
    layer = keras.layers.Dense(3)
    m = keras.Model(i, layer(i))
    layer.set_weights([W, B])
    return m


def mlp(features=6, outputs=3, seed=0):
    keras.utils.set_random_seed(seed)
    i = keras.Input((features,))
    h = keras.layers.Dense(16, activation="tanh")(i)
    h = keras.layers.Dense(16, activation="relu")(h)
    return keras.Model(i, keras.layers.Dense(outputs)(h))


def salient_cnn():
    """Conv (3x3 ones kernel, relu) -> global average -> sum: the output
    grows with the bright pixels, so a bright patch is the salient region.
    """
    i = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(
        2, 3, padding="same", activation="relu", name="conv"
    )
    h = conv(i)
    dense = keras.layers.Dense(2)
    out = dense(keras.layers.GlobalAveragePooling2D()(h))
    m = keras.Model(i, out)
    kernel = np.zeros((3, 3, 1, 2), np.float32)
    kernel[..., 0] = 1.0
    kernel[..., 1] = -1.0
    conv.set_weights([kernel, np.zeros(2, np.float32)])
    dense.set_weights(
        [
            np.array([[1.0, 0.0], [0.0, 1.0]], np.float32),
            np.zeros(2, np.float32),
        ]
    )
    return m


def patch_images(n=2):
    """Zero images with a bright 2x2 patch at rows/cols 4-5."""
    x = np.zeros((n, 8, 8, 1), np.float32)
    x[:, 4:6, 4:6, 0] = 1.0
    return x


def text_model(vocab=20, length=6, dim=4, seed=0):
    """Embedding (mask_zero) -> masked mean -> Dense(2)."""
    keras.utils.set_random_seed(seed)
    i = keras.Input((length,), dtype="int32")
    e = keras.layers.Embedding(vocab, dim, mask_zero=True, name="embed")(i)
    h = keras.layers.GlobalAveragePooling1D()(e)
    return keras.Model(i, keras.layers.Dense(2, name="head")(h))
