"""The dropout of kbm's blocks (layers/_dropout.py): Keras's Dropout, with
kbm's dropout kernel in training."""

import numpy as np
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.layers._dropout import FusedDropout
from keras_bigmodels.testing import kbm_ops_in, random_tensor


def graph_ops(fn, x):
    concrete = tf.function(fn).get_concrete_function(
        tf.TensorSpec(x.shape, x.dtype)
    )
    return kbm_ops_in(concrete)


def test_training_uses_the_kernel_and_inference_is_identity(keras):
    x = random_tensor((4, 50), tf.float32, 0)
    layer = FusedDropout(0.3)
    assert "Kbm>Dropout" in graph_ops(lambda t: layer(t, training=True), x)
    np.testing.assert_array_equal(layer(x, training=False), x)
    y = layer(x, training=True).numpy()
    kept = y != 0
    np.testing.assert_allclose(
        y[kept], x.numpy()[kept] / np.float32(0.7), rtol=1e-6
    )
    assert 0.5 < kept.mean() < 0.9
    # A new mask on every call.
    assert np.any((layer(x, training=True).numpy() != 0) != kept)


def test_seeded_layers_repeat_their_masks(keras):
    if IS_LEGACY_KERAS:
        return  # tf-keras: seeds come from the global seed (as attention's).
    x = tf.ones([8, 64])
    a, b = FusedDropout(0.5, seed=7), FusedDropout(0.5, seed=7)
    np.testing.assert_array_equal(a(x, training=True), b(x, training=True))


def test_keras_dropout_where_the_kernel_does_not_apply(keras):
    x = random_tensor((4, 50), tf.float32, 1)
    shaped = FusedDropout(0.3, noise_shape=(4, 1))
    assert graph_ops(lambda t: shaped(t, training=True), x) == []
    y = shaped(x, training=True).numpy()
    assert all(np.all(r == 0) or np.all(r != 0) for r in y)
    with kbm.config.fused_kernels(False):
        plain = FusedDropout(0.3)
        assert graph_ops(lambda t: plain(t, training=True), x) == []


def test_config_is_keras_dropout(keras):
    layer = FusedDropout(0.25, seed=3)
    config = layer.get_config()
    assert config["rate"] == 0.25
    again = keras.layers.Dropout.from_config(config)
    assert again.rate == 0.25


def test_encoder_block_gradients_match_without_dropout(keras):
    """With rate 0 the block is deterministic either way; with dropout the
    kernel's mask is applied to the gradient too (finite, same zeros)."""
    x = random_tensor((2, 9, 16), tf.float32, 2)
    block = kbm.layers.TransformerEncoder(32, 2, dropout=0.5)
    block(x)
    assert "Kbm>Dropout" in graph_ops(lambda t: block(t, training=True), x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = block(x, training=True)
    g = tape.gradient(y, [x, *block.trainable_weights])
    assert all(np.isfinite(t.numpy()).all() for t in g)
