"""kbm.layers.PositionEmbedding: learned position embeddings."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.testing import (
    assert_close,
    random_tensor,
    run_layer_test,
)


def built_layer(sequence_length=10, hidden=4, seed=0, **kwargs):
    """A built layer whose embeddings are known random values."""
    layer = kbm.layers.PositionEmbedding(sequence_length, **kwargs)
    layer.build((None, None, hidden))
    table = random_tensor((sequence_length, hidden), tf.float32, seed).numpy()
    layer.set_weights([table])
    return layer, table


def test_returns_the_embeddings_broadcast_to_the_inputs():
    layer, table = built_layer()
    x = random_tensor((3, 10, 4), tf.float32, seed=1)
    y = layer(x)
    assert y.shape == (3, 10, 4)
    assert_close(y, np.broadcast_to(table, (3, 10, 4)), 0, 0)
    assert [w.name.split("/")[-1].split(":")[0] for w in layer.weights] == [
        "embeddings"
    ]
    assert layer.weights[0].shape == (10, 4)


def test_leading_dims_and_shorter_inputs():
    layer, table = built_layer()
    y = layer(tf.zeros((2, 3, 6, 4)))
    assert_close(y, np.broadcast_to(table[:6], (2, 3, 6, 4)), 0, 0)
    assert_close(layer(tf.zeros((6, 4))), table[:6], 0, 0)


def test_start_index():
    layer, table = built_layer()
    assert_close(
        layer(tf.zeros((2, 3, 4)), start_index=7),
        np.broadcast_to(table[7:10], (2, 3, 4)),
        0,
        0,
    )


def test_start_index_tensor_with_dynamic_length_in_tf_function():
    layer, table = built_layer()
    fn = tf.function(
        lambda x, i: layer(x, start_index=i),
        input_signature=[
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([], tf.int32),
        ],
    )
    for start, length in ((0, 10), (4, 1), (9, 1)):
        y = fn(tf.zeros((2, length, 4)), tf.constant(start))
        expected = np.broadcast_to(table[start : start + length], y.shape)
        assert_close(y, expected, 0, 0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="sequence_len"):
        fn(tf.zeros((2, 3, 4)), tf.constant(8))


def test_explicit_positions():
    layer, table = built_layer()
    x = tf.zeros((2, 3, 4))
    assert_close(
        layer(x, positions=tf.constant([5, 0, 9])),
        np.broadcast_to(table[[5, 0, 9]], (2, 3, 4)),
        0,
        0,
    )
    batched = np.array([[1, 2, 3], [7, 8, 9]])
    assert_close(layer(x, positions=tf.constant(batched)), table[batched], 0, 0)


def test_mask_passes_through():
    layer, _ = built_layer()
    mask = tf.constant([[True, True, False]])
    assert layer.compute_mask(tf.zeros((1, 3, 4)), mask) is mask


def test_mixed_precision_output_dtype():
    layer = kbm.layers.PositionEmbedding(5, dtype="mixed_float16")
    y = layer(tf.zeros((2, 5, 4)))
    assert y.dtype == tf.float16
    assert layer.weights[0].dtype == tf.float32


def test_config_round_trip():
    layer = kbm.layers.PositionEmbedding(
        16, initializer="zeros", name="positions"
    )
    config = layer.get_config()
    assert config["sequence_length"] == 16
    clone = kbm.layers.PositionEmbedding.from_config(config)
    assert clone.get_config() == config
    assert_close(clone(tf.ones((1, 4, 3))), np.zeros((1, 4, 3)), 0, 0)


@pytest.mark.parametrize("value", [-3, 0, None, 2.5, True])
def test_bad_sequence_length(value):
    with pytest.raises(
        ValueError, match=f"Received: sequence_length={value!r}"
    ):
        kbm.layers.PositionEmbedding(value)


def test_too_long_or_bad_inputs():
    layer = kbm.layers.PositionEmbedding(4)
    with pytest.raises(ValueError, match="sequence_length=4 positions"):
        layer(tf.zeros((2, 5, 3)))
    layer, _ = built_layer(sequence_length=4)
    with pytest.raises(ValueError, match="Received: sequence length 3"):
        layer(tf.zeros((2, 3, 4)), start_index=2)
    with pytest.raises(ValueError, match="Received: start_index=-1"):
        layer(tf.zeros((2, 3, 4)), start_index=-1)
    with pytest.raises(ValueError, match="known hidden size"):
        kbm.layers.PositionEmbedding(4).build((2, 3, None))
    with pytest.raises(ValueError, match=r"\[seq\] or \[batch, seq\]"):
        layer(tf.zeros((1, 3, 4)), positions=tf.zeros((1, 1, 3), tf.int32))


def test_layer_contract(tmp_path):
    run_layer_test(
        kbm.layers.PositionEmbedding,
        {"sequence_length": 8},
        (16, 6, 4),
        expected_output_shape=(16, 6, 4),
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=0,
        tmp_dir=tmp_path,
    )
