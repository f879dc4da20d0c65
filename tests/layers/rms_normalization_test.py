"""kbm.layers.RMSNormalization: Keras 3's RMSNormalization, fused."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.testing import (
    assert_close,
    kbm_ops_in,
    random_tensor,
    run_layer_test,
)


def numpy_rms(x, scale, axes, eps):
    x = np.asarray(x, np.float64)
    ms = (x**2).mean(axis=tuple(axes), keepdims=True)
    return x / np.sqrt(ms + eps) * scale


@pytest.mark.parametrize("axis", [-1, 2, 1, [1, 2]])
def test_matches_numpy(axis):
    x = random_tensor((3, 4, 6), tf.float32, seed=0, scale=2)
    layer = kbm.layers.RMSNormalization(axis=axis, epsilon=1e-5)
    layer.build(x.shape)
    scale = random_tensor(layer.scale.shape, tf.float32, seed=1).numpy()
    layer.set_weights([scale])
    axes = axis if isinstance(axis, list) else [axis % 3]
    bshape = [x.shape[i] if i in axes else 1 for i in range(3)]
    expected = numpy_rms(x, scale.reshape(bshape), axes, 1e-5)
    assert_close(layer(x), expected, 1e-5, 1e-5)


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="tf-keras has no RMSNormalization")
def test_matches_keras3_layer_with_copied_weights(keras):
    x = random_tensor((4, 7, 33), tf.float32, seed=2)
    ref = keras.layers.RMSNormalization(epsilon=1e-6)
    ours = kbm.layers.RMSNormalization(epsilon=1e-6)
    ref.build(x.shape)
    ours.build(x.shape)
    ref.set_weights([random_tensor((33,), tf.float32, seed=3).numpy()])
    ours.set_weights(ref.get_weights())
    assert [w.path.split("/")[-1] for w in ours.weights] == [
        w.path.split("/")[-1] for w in ref.weights
    ]
    assert_close(ours(x), ref(x), 1e-5, 1e-5)
    assert set(ours.get_config()) == set(ref.get_config())


def test_last_axis_uses_the_kernel():
    layer = kbm.layers.RMSNormalization()
    fn = tf.function(layer).get_concrete_function(tf.ones((2, 8)))
    assert kbm_ops_in(fn) == ["Kbm>FusedRmsNorm"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: epsilon=-1"):
        kbm.layers.RMSNormalization(epsilon=-1)
    with pytest.raises(ValueError, match="Received: axis='x'"):
        kbm.layers.RMSNormalization(axis="x")
    with pytest.raises(ValueError, match=r"axis 3 is out of range"):
        kbm.layers.RMSNormalization(axis=3).build((2, 3, 4))


@pytest.mark.parametrize("axis", [-1, [1, 2]])
def test_layer_contract(tmp_path, axis):
    run_layer_test(
        kbm.layers.RMSNormalization,
        {"axis": axis},
        (16, 5, 12),
        expected_output_shape=(16, 5, 12),
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        tmp_dir=tmp_path,
    )
