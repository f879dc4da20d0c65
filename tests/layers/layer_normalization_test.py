"""kbm.layers.LayerNormalization: Keras's layer, fused on the last axis."""

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


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"epsilon": 1e-12},
        {"center": False},
        {"scale": False},
        {"axis": 1},  # Not the last axis: Keras's own code path.
        {"axis": [1, 2]},
    ],
)
def test_matches_keras_layer_with_copied_weights(keras, kwargs):
    x = random_tensor((4, 6, 10), tf.float32, seed=0, scale=2, offset=1)
    ref = keras.layers.LayerNormalization(
        gamma_initializer="random_normal",
        beta_initializer="random_normal",
        **kwargs,
    )
    ours = kbm.layers.LayerNormalization(**kwargs)
    ref.build(x.shape)
    ours.build(x.shape)
    assert [w.shape for w in ours.weights] == [w.shape for w in ref.weights]
    assert [w.name.split("/")[-1].split(":")[0] for w in ours.weights] == [
        w.name.split("/")[-1].split(":")[0] for w in ref.weights
    ]
    ours.set_weights(ref.get_weights())
    assert_close(ours(x), ref(x), 1e-5, 1e-5)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ours, y_ref = ours(x), ref(x)
    for a, b in zip(
        tape.gradient(y_ours, [x, *ours.trainable_weights]),
        tape.gradient(y_ref, [x, *ref.trainable_weights]),
    ):
        assert_close(a, b, 1e-4, 1e-4, what="gradient")


def test_last_axis_uses_the_kernel_other_axes_do_not():
    x = tf.ones((2, 3, 8))
    last = kbm.layers.LayerNormalization()
    other = kbm.layers.LayerNormalization(axis=1)
    assert kbm_ops_in(tf.function(last).get_concrete_function(x)) == [
        "Kbm>FusedLayerNorm"
    ]
    assert kbm_ops_in(tf.function(other).get_concrete_function(x)) == []


def test_config_round_trip_and_no_kernel_choice(keras):
    layer = kbm.layers.LayerNormalization(epsilon=1e-5, center=False)
    config = layer.get_config()
    assert not any("fused" in k or "kernel" in k for k in config)
    ref_config = keras.layers.LayerNormalization(
        epsilon=1e-5, center=False
    ).get_config()
    assert set(config) == set(ref_config)
    clone = kbm.layers.LayerNormalization.from_config(config)
    assert clone.epsilon == 1e-5 and clone.center is False
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is kbm.layers.LayerNormalization


def test_mixed_precision(keras):
    policy = "mixed_float16"
    x = random_tensor((4, 16), tf.float16, seed=3)
    ours = kbm.layers.LayerNormalization(dtype=policy)
    ref = keras.layers.LayerNormalization(dtype=policy)
    ours.build(x.shape)
    ref.build(x.shape)
    assert ours.gamma.dtype == ref.gamma.dtype
    y = ours(x)
    assert y.dtype == ref(x).dtype == tf.float16
    assert_close(y, ref(x), 2e-3, 2e-3)


@pytest.mark.parametrize("center, scale", [(True, True), (False, True)])
def test_layer_contract(tmp_path, center, scale):
    run_layer_test(
        kbm.layers.LayerNormalization,
        {"center": center, "scale": scale, "beta_initializer": "ones"},
        (16, 5, 12),
        expected_output_shape=(16, 5, 12),
        expected_num_trainable_weights=int(center) + int(scale),
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        tmp_dir=tmp_path,
    )


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="supports_jit is Keras 3's")
def test_keras3_does_not_auto_jit_the_layer():
    assert kbm.layers.LayerNormalization().supports_jit is False
