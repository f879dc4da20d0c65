"""kbm.layers.RotaryEmbedding and apply_rotary_embedding: RoPE."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.layers.rotary_embedding import apply_rotary_embedding
from keras_bigmodels.testing import (
    assert_close,
    random_tensor,
    run_layer_test,
)


def numpy_rope(x, positions, max_wavelength=10000, scaling_factor=1.0):
    """RoPE on `x` of shape [batch, seq, ..., d], pair by pair, in float64.

    `positions` has shape [seq] or [batch, seq]. Pair i is (x_i, x_{i+d/2})
    ("rotate half"), rotated by theta_i = (p / s) / max_wavelength^(2i/d).
    """
    x = np.asarray(x, np.float64)
    batch, seq, d = x.shape[0], x.shape[1], x.shape[-1]
    positions = np.broadcast_to(np.asarray(positions, np.float64), (batch, seq))
    out = np.empty_like(x)
    for b in range(batch):
        for t in range(seq):
            p = positions[b, t] / scaling_factor
            for i in range(d // 2):
                theta = p / max_wavelength ** (2 * i / d)
                c, s = np.cos(theta), np.sin(theta)
                a, bb = x[b, t, ..., i], x[b, t, ..., i + d // 2]
                out[b, t, ..., i] = c * a - s * bb
                out[b, t, ..., i + d // 2] = s * a + c * bb
    return out


@pytest.mark.parametrize(
    "shape, max_wavelength, scaling_factor",
    [
        ((2, 5, 3, 8), 10000, 1.0),
        ((2, 7, 6), 10000, 1.0),
        ((1, 9, 2, 16), 500, 4.0),
        ((3, 1, 1, 2), 10000, 0.5),
    ],
)
def test_matches_numpy(shape, max_wavelength, scaling_factor):
    x = random_tensor(shape, tf.float32, seed=0)
    layer = kbm.layers.RotaryEmbedding(
        max_wavelength=max_wavelength, scaling_factor=scaling_factor
    )
    expected = numpy_rope(
        x, np.arange(shape[1]), max_wavelength, scaling_factor
    )
    assert_close(layer(x), expected, 1e-5, 1e-5)


def test_float64_is_computed_in_float64():
    x = random_tensor((2, 6, 3, 10), tf.float64, seed=1)
    y = apply_rotary_embedding(x, start_index=1000)
    assert y.dtype == tf.float64
    expected = numpy_rope(x, np.arange(1000, 1006))
    assert_close(y, expected, 1e-12, 1e-12)
    layer = kbm.layers.RotaryEmbedding(dtype="float64")
    assert_close(layer(x, start_index=1000), expected, 1e-12, 1e-12)


def test_start_index_is_an_offset():
    x = random_tensor((2, 12, 2, 8), tf.float32, seed=2)
    layer = kbm.layers.RotaryEmbedding()
    full = layer(x)
    tail = layer(x[:, 5:], start_index=5)
    assert_close(tail, full[:, 5:], 1e-6, 1e-6)
    assert_close(tail, numpy_rope(x[:, 5:], np.arange(5, 12)), 1e-5, 1e-5)


def test_start_index_tensor_in_tf_function():
    layer = kbm.layers.RotaryEmbedding()
    fn = tf.function(
        lambda x, i: layer(x, start_index=i),
        input_signature=[
            tf.TensorSpec([None, None, 2, 8], tf.float32),
            tf.TensorSpec([], tf.int32),
        ],
    )
    x = random_tensor((1, 1, 2, 8), tf.float32, seed=3)
    for step in (0, 7, 40):
        expected = numpy_rope(x, [step])
        assert_close(fn(x, tf.constant(step)), expected, 1e-5, 1e-5)


def test_explicit_positions():
    x = random_tensor((2, 4, 3, 8), tf.float32, seed=4)
    layer = kbm.layers.RotaryEmbedding(scaling_factor=2.0)
    flat = [3, 0, 9, 2]
    assert_close(
        layer(x, positions=tf.constant(flat)),
        numpy_rope(x, flat, scaling_factor=2.0),
        1e-5,
        1e-5,
    )
    batched = np.array([[0, 1, 2, 3], [10, 11, 20, 21]])
    assert_close(
        layer(x, positions=tf.constant(batched), start_index=99),
        numpy_rope(x, batched, scaling_factor=2.0),
        1e-5,
        1e-5,
    )


def test_other_axes():
    # [batch, heads, seq, dim] and [batch, dim, seq].
    x = random_tensor((2, 3, 5, 8), tf.float32, seed=5)
    y = kbm.layers.RotaryEmbedding(sequence_axis=2)(x)
    expected = numpy_rope(np.swapaxes(x.numpy(), 1, 2), np.arange(5))
    assert_close(y, np.swapaxes(expected, 1, 2), 1e-5, 1e-5)
    x = random_tensor((2, 6, 4), tf.float32, seed=6)
    y = apply_rotary_embedding(
        x, sequence_axis=-1, feature_axis=1, positions=[[1, 2, 3, 4]] * 2
    )
    expected = numpy_rope(np.swapaxes(x.numpy(), 1, 2), np.arange(1, 5))
    assert_close(y, np.swapaxes(expected, 1, 2), 1e-5, 1e-5)


def test_rotation_preserves_pair_norms():
    x = random_tensor((2, 16, 2, 12), tf.float32, seed=7, scale=3)
    y = apply_rotary_embedding(x, start_index=123).numpy()
    x = x.numpy()

    def pair_norms(a):
        return np.hypot(a[..., :6], a[..., 6:])

    assert_close(pair_norms(y), pair_norms(x), 1e-5, 1e-5)


def test_dot_product_depends_only_on_relative_position():
    seq, d = 12, 16
    q = random_tensor((d,), tf.float64, seed=8).numpy()
    k = random_tensor((d,), tf.float64, seed=9).numpy()
    # The same q and k at every position: [1, seq, 1, d].
    rq = apply_rotary_embedding(
        tf.constant(np.tile(q, (1, seq, 1, 1)))
    ).numpy()[0, :, 0]
    rk = apply_rotary_embedding(
        tf.constant(np.tile(k, (1, seq, 1, 1)))
    ).numpy()[0, :, 0]
    scores = rq @ rk.T  # scores[m, n] = <R_m q, R_n k>
    for offset in range(-seq + 1, seq):
        diagonal = np.diagonal(scores, offset)
        assert_close(diagonal, np.full_like(diagonal, diagonal[0]), 1e-9, 1e-9)
    # And it is not constant across offsets (the position matters).
    assert not np.isclose(scores[0, 0], scores[0, 3])


def test_gradient_is_the_inverse_rotation():
    x = random_tensor((2, 5, 2, 8), tf.float64, seed=10)
    dy = random_tensor(x.shape, tf.float64, seed=11)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = apply_rotary_embedding(x)
    dx = tape.gradient(y, x, output_gradients=dy)
    inverse = apply_rotary_embedding(dy, positions=-np.arange(5))
    assert_close(dx, inverse, 1e-12, 1e-12)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_keeps_dtype(dtype):
    x = random_tensor((2, 6, 2, 8), dtype, seed=12)
    y = apply_rotary_embedding(x)
    assert y.dtype == dtype
    tol = 1e-2 if dtype == tf.bfloat16 else 2e-3
    assert_close(y, numpy_rope(tf.cast(x, tf.float64), np.arange(6)), tol, tol)
    layer = kbm.layers.RotaryEmbedding(dtype="mixed_float16")
    assert layer(random_tensor((1, 3, 4), tf.float32, 0)).dtype == tf.float16


def test_mask_passes_through_and_shapes():
    layer = kbm.layers.RotaryEmbedding()
    mask = tf.constant([[True, False, True]])
    assert layer.compute_mask(tf.zeros((1, 3, 4)), mask) is mask
    assert tuple(layer.compute_output_shape((None, 3, 2, 4))) == (
        None,
        3,
        2,
        4,
    )
    assert layer.weights == []


def test_config_round_trip():
    layer = kbm.layers.RotaryEmbedding(
        max_wavelength=500000, scaling_factor=8.0, sequence_axis=2
    )
    config = layer.get_config()
    assert config["max_wavelength"] == 500000
    assert config["scaling_factor"] == 8.0
    assert config["sequence_axis"] == 2 and config["feature_axis"] == -1
    clone = kbm.layers.RotaryEmbedding.from_config(config)
    assert clone.get_config() == config


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: max_wavelength=0"):
        kbm.layers.RotaryEmbedding(max_wavelength=0)
    with pytest.raises(ValueError, match="Received: max_wavelength=-5"):
        apply_rotary_embedding(tf.ones((1, 2, 4)), max_wavelength=-5)
    with pytest.raises(ValueError, match="Received: scaling_factor=0"):
        kbm.layers.RotaryEmbedding(scaling_factor=0.0)
    with pytest.raises(ValueError, match="Received: sequence_axis='1'"):
        kbm.layers.RotaryEmbedding(sequence_axis="1")
    with pytest.raises(ValueError, match="must be different"):
        kbm.layers.RotaryEmbedding(sequence_axis=-1)


def test_bad_inputs():
    layer = kbm.layers.RotaryEmbedding()
    with pytest.raises(ValueError, match="feature size 7"):
        layer(tf.ones((2, 3, 4, 7)))
    with pytest.raises(ValueError, match="feature size 5"):
        apply_rotary_embedding(
            tf.ones((2, 5, 6)), sequence_axis=2, feature_axis=1
        )
    with pytest.raises(ValueError, match="must be different axes"):
        kbm.layers.RotaryEmbedding(sequence_axis=2)(tf.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="out of range"):
        kbm.layers.RotaryEmbedding(sequence_axis=3)(tf.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="floating-point"):
        apply_rotary_embedding(tf.ones((2, 3, 4), tf.int32))
    with pytest.raises(ValueError, match=r"\[seq\] or \[batch, seq\]"):
        layer(tf.ones((1, 3, 4)), positions=tf.zeros((1, 1, 3), tf.int32))
    with pytest.raises(ValueError, match="batch on axis 0"):
        apply_rotary_embedding(
            tf.ones((3, 2, 4)), sequence_axis=0, positions=[[0, 1, 2]]
        )


def test_layer_contract(tmp_path):
    run_layer_test(
        kbm.layers.RotaryEmbedding,
        {},
        (16, 6, 2, 8),
        expected_output_shape=(16, 6, 2, 8),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        run_training_check=False,  # No weights to train.
        tmp_dir=tmp_path,
    )
