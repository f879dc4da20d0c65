"""kbm.models.mean_pool and MeanPooling: masked means."""

import numpy as np
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.testing import assert_close


def test_mean_pool_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4)).astype("float32")
    mask = np.array(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype="int32"
    )
    expected = np.stack([x[i, : mask[i].sum()].mean(0) for i in range(3)])
    assert_close(kbm.models.mean_pool(x, mask), expected, 1e-6, 1e-6)
    assert_close(kbm.models.mean_pool(x, mask.astype(bool)), expected, 0, 0)
    assert_close(kbm.models.mean_pool(x), x.mean(1), 1e-6, 1e-6)


def test_padding_cannot_leak_and_empty_rows_give_zeros():
    x = np.ones((2, 3, 2), "float32")
    x[0, 2] = np.nan
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    pooled = kbm.models.mean_pool(x, mask).numpy()
    np.testing.assert_array_equal(pooled, [[1, 1], [0, 0]])


def test_half_precision_sums_in_float32():
    x = tf.fill((1, 4096, 2), tf.constant(30.0, tf.float16))
    pooled = kbm.models.mean_pool(x, tf.ones((1, 4096)))
    assert pooled.dtype == tf.float16
    np.testing.assert_array_equal(pooled.numpy(), [[30.0, 30.0]])


def test_layer_reads_keras_masks_and_padding_masks(keras):
    tokens = np.array([[3, 4, 0, 0], [5, 6, 7, 1]])
    emb = keras.layers.Embedding(8, 4, mask_zero=True)
    inputs = keras.Input((4,), dtype="int32")
    pooled = kbm.models.MeanPooling()(emb(inputs))
    model = keras.Model(inputs, pooled)
    vectors = emb(tokens).numpy()
    valid = tokens != 0
    expected = (vectors * valid[..., None]).sum(1) / valid.sum(1)[:, None]
    assert_close(model(tokens), expected, 1e-6, 1e-6)
    explicit = kbm.models.MeanPooling()(
        vectors, padding_mask=np.array([[1, 0, 0, 0], [1, 1, 1, 1]])
    )
    assert_close(explicit, [vectors[0, 0], vectors[1].mean(0)], 1e-6, 1e-6)


def test_layer_config_round_trip(keras):
    layer = kbm.models.MeanPooling(name="pool")
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(restored) is kbm.models.MeanPooling
    assert restored.name == "pool"
    assert layer.compute_output_shape((2, 7, 5)) == (2, 5)


def test_graph_mode():
    x = tf.random.normal((2, 3, 4))
    mask = tf.constant([[1, 1, 0], [1, 1, 1]])
    fn = kbm.models.mean_pool
    assert_close(tf.function(fn)(x, mask), fn(x, mask), 0, 0)
