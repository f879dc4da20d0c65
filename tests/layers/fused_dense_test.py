"""kbm.layers.FusedDense: keras Dense with a fused bias + GELU epilogue."""

import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.testing import (
    assert_close,
    kbm_ops_in,
    random_tensor,
    run_layer_test,
)


def keras_twin(keras, activation, **kwargs):
    if activation == "gelu_tanh":
        act = lambda x: keras.activations.gelu(x, approximate=True)  # noqa
    else:
        act = activation
    return keras.layers.Dense(
        16, activation=act, bias_initializer="random_normal", **kwargs
    )


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", None, "relu"])
@pytest.mark.parametrize("shape", [(8, 12), (2, 5, 12)])
@pytest.mark.parametrize("use_bias", [True, False])
def test_matches_keras_dense_with_copied_weights(
    keras, activation, shape, use_bias
):
    x = random_tensor(shape, tf.float32, seed=0, scale=2)
    ref = keras_twin(keras, activation, use_bias=use_bias)
    ours = kbm.layers.FusedDense(16, activation=activation, use_bias=use_bias)
    ref.build(x.shape)
    ours.build(x.shape)
    assert [w.shape for w in ours.weights] == [w.shape for w in ref.weights]
    ours.set_weights(ref.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ours, y_ref = ours(x), ref(x)
    assert y_ours.shape == y_ref.shape
    assert_close(y_ours, y_ref, 1e-5, 1e-5)
    for a, b in zip(
        tape.gradient(y_ours, [x, *ours.trainable_weights]),
        tape.gradient(y_ref, [x, *ref.trainable_weights]),
    ):
        assert_close(a, b, 1e-4, 1e-4, what="gradient")


def test_gelu_runs_the_fused_epilogue():
    x = tf.ones((4, 12))
    for activation, expected in [("gelu", ["Kbm>BiasGelu"]), ("relu", [])]:
        layer = kbm.layers.FusedDense(8, activation=activation)
        fn = tf.function(layer).get_concrete_function(x)
        assert kbm_ops_in(fn) == expected


def test_config(keras):
    layer = kbm.layers.FusedDense(8, activation="gelu_tanh", use_bias=False)
    config = layer.get_config()
    assert config["activation"] == "gelu_tanh"
    assert not any("fused" in k for k in config)
    clone = kbm.layers.FusedDense.from_config(config)
    assert clone.get_config()["activation"] == "gelu_tanh"
    assert set(config) == set(keras.layers.Dense(8).get_config())
    relu = kbm.layers.FusedDense(8, activation="relu").get_config()
    assert relu["activation"] == "relu"


def test_bad_units():
    with pytest.raises(ValueError, match="units"):
        kbm.layers.FusedDense(-3)


def test_mixed_precision(keras):
    x = random_tensor((4, 12), tf.float32, seed=4)
    ours = kbm.layers.FusedDense(8, activation="gelu", dtype="mixed_float16")
    ref = keras.layers.Dense(8, activation="gelu", dtype="mixed_float16")
    ours.build(x.shape)
    ref.build(x.shape)
    ours.set_weights(ref.get_weights())
    y = ours(x)
    assert y.dtype == ref(x).dtype == tf.float16
    assert_close(y, ref(x), 3e-3, 3e-3)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", None])
def test_layer_contract(tmp_path, activation):
    run_layer_test(
        kbm.layers.FusedDense,
        {"units": 8, "activation": activation},
        (16, 5, 12),
        expected_output_shape=(16, 5, 8),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=0,
        tmp_dir=tmp_path,
    )


def test_model_with_jit_compile_true_trains(keras):
    # Keras 3 turns XLA off (supports_jit=False); tf-keras compiles the
    # model and the layers use the reference inside XLA.
    inputs = keras.Input((12,))
    h = kbm.layers.FusedDense(16, activation="gelu")(inputs)
    h = kbm.layers.LayerNormalization()(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile("sgd", "mse", jit_compile=True)
    x = random_tensor((32, 12), tf.float32, seed=5).numpy()
    history = model.fit(x, x[:, :1], epochs=2, verbose=0)
    assert all(map(lambda v: v == v, history.history["loss"]))
