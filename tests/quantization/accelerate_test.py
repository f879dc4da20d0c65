"""kbm.quantization.accelerate: Keras 3 int8 layers on kbm's W8A8 kernel.

Keras's int8 path and kbm's both sum the int8 products exactly in int32;
they differ in the activation step (Keras divides by `max |row| + 1e-7`,
kbm by `max |row|`) and in dequantizing by a division (Keras) or a
multiplication (kbm). For rows with `max |row|` of order 1 or more the
integer inputs are identical and the outputs agree to float32 rounding;
rows of small magnitude may see single values one step apart, which the
bound in `test_small_rows_within_one_step` covers.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

keras3 = pytest.mark.skipif(IS_LEGACY_KERAS, reason="Keras 3 quantize API")
STATE = "_kbm_accelerate"


def _x(shape, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal(shape)).astype("float32")


def _model(keras_mha=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 32))
    h = keras.layers.Dense(48, activation="gelu", name="gelu")(inputs)
    if keras_mha:
        h = keras.layers.MultiHeadAttention(4, 8, name="mha")(h, h)
    h = kbm.layers.MultiHeadAttention(4, 8, name="kbm_mha")(h, h)
    h = kbm.layers.FusedDense(40, activation="gelu_tanh", name="fused")(h)
    h = keras.layers.Dense(40, activation="relu", name="relu")(h)
    h = keras.layers.EinsumDense(
        "abc,cd->abd", (None, 24), bias_axes="d", name="einsum"
    )(h)
    # (Keras 3.15.1 cannot int8-quantize "..." equations: not tested.)
    h = keras.layers.EinsumDense(
        "abc,cd->abd", (None, 20), bias_axes="d", activation="tanh", name="tanh"
    )(h)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(h))


def _keras_path(model, x, **kwargs):
    """The model's output on Keras's own int8 path."""
    kbm.quantization.accelerate(model, undo=True)
    try:
        return np.asarray(model(x, **kwargs))
    finally:
        kbm.quantization.accelerate(model)


@pytest.mark.skipif(not IS_LEGACY_KERAS, reason="tf-keras only")
def test_tf_keras_raises_clear_error():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(NotImplementedError, match="needs Keras 3"):
        kbm.quantization.accelerate(model)


@keras3
def test_single_dense_matches_keras_to_float_rounding():
    layer = keras.layers.Dense(96, activation=None)
    layer.build((None, 128))
    layer.quantize("int8")
    x = _x((64, 128), seed=1)
    y_keras = np.asarray(layer(x))
    report = kbm.quantization.accelerate(layer)
    assert len(report["accelerated"]) == 1 and not report["skipped"]
    y = np.asarray(layer(x))
    # Same integer inputs and sums: only the dequantization rounding.
    np.testing.assert_allclose(y, y_keras, rtol=2e-6, atol=2e-6)


@keras3
def test_small_rows_within_one_step():
    """Rows with max |x| ~ 1e-3: Keras's +1e-7 can move values one step."""
    layer = keras.layers.Dense(64, use_bias=False)
    layer.build((None, 256))
    layer.quantize("int8")
    x = _x((128, 256), seed=2, scale=3e-4)
    y_keras = np.asarray(layer(x))
    kbm.quantization.accelerate(layer)
    y = np.asarray(layer(x))
    step = np.abs(x).max(axis=1, keepdims=True) / 127
    w = np.asarray(layer._kernel, np.float32) / np.asarray(layer.kernel_scale)
    bound = step * np.abs(w).sum(axis=0)[None, :] + 1e-6 * np.abs(y_keras)
    assert np.all(np.abs(y - y_keras) <= bound)
    # Here Keras's steps are also (1 + 1e-7 / max |row|) ~ 1 + 3e-4 wider:
    # measured max difference 7e-4 of max |y|.
    assert np.abs(y - y_keras).max() / np.abs(y_keras).max() < 3e-3


@keras3
def test_model_matches_keras_int8():
    model = _model()
    model.quantize("int8")
    x = _x((3, 6, 32))
    y_keras = np.asarray(model(x))
    report = kbm.quantization.accelerate(model)
    assert not report["skipped"], report["skipped"]
    names = {path.split("/")[0] for path in report["accelerated"]}
    assert {"gelu", "mha", "kbm_mha", "fused", "relu", "einsum"} <= names
    assert len(report["accelerated"]) == 14  # 6 layers + 2 x 4 projections
    y = np.asarray(model(x))
    err = np.abs(y - y_keras).max() / np.abs(y_keras).max()
    assert err < 1e-4, err
    np.testing.assert_allclose(
        model.predict(x, verbose=0), y, rtol=1e-5, atol=1e-6
    )
    assert model.predict_function is not None
    kbm.quantization.accelerate(model)  # Re-packs, drops traced functions.
    assert model.predict_function is None
    assert not model.layers[-1].supports_jit
    kbm.quantization.accelerate(model, undo=True)
    assert model.layers[-1].supports_jit
    assert all(STATE not in layer.__dict__ for layer in model.layers)


@keras3
def test_gradients_match_keras():
    model = _model()
    model.quantize("int8")
    x = tf.constant(_x((2, 6, 32), seed=3))

    def grads():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(model(x, training=True) ** 2)
        return tape.gradient(loss, [x] + model.trainable_variables)

    reference = grads()
    kbm.quantization.accelerate(model)
    got = grads()
    # (The key projection's bias gradient is ~0: softmax ignores it.)
    floor = 1e-3 * max(float(np.abs(g).max()) for g in reference)
    for a, b in zip(got, reference):
        assert (a is None) == (b is None)
        if a is not None:
            scale = max(float(np.abs(b).max()), floor)
            assert float(np.abs(a - b).max()) / scale < 1e-4
    model.compile("adam", "mse")
    model.fit(x, np.zeros((2, 6, 5), "float32"), epochs=1, verbose=0)


@keras3
@pytest.mark.parametrize("mode", ["int4", "float8"])
def test_other_keras_modes_skipped(mode):
    inputs = keras.Input((16,))
    h = keras.layers.Dense(8, name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="b")(h))
    model.quantize(mode)
    x = _x((2, 16))
    y = np.asarray(model(x))
    report = kbm.quantization.accelerate(model)
    assert report["accelerated"] == []
    assert set(report["skipped"]) == {"a", "b"}
    assert all(mode in reason for reason in report["skipped"].values())
    np.testing.assert_array_equal(np.asarray(model(x)), y)


@keras3
def test_skip_reasons_and_exclude():
    inputs = keras.Input((16,))
    h = keras.layers.Dense(16, name="float")(inputs)
    h = keras.layers.Dense(16, name="keras_int8")(h)
    h = keras.layers.Dense(16, name="kbm_int8")(h)
    h = keras.layers.Dense(8, name="lora")(h)
    model = keras.Model(inputs, keras.layers.Dense(4, name="excluded")(h))
    for name in ("keras_int8", "lora", "excluded"):
        model.get_layer(name).quantize("int8")
    model.get_layer("lora").enable_lora(2)
    kbm.quantization.quantize(
        model, "int8", exclude=lambda layer: layer.name != "kbm_int8"
    )
    report = kbm.quantization.accelerate(model, exclude=["excluded"])
    assert report["accelerated"] == ["keras_int8"]
    skipped = report["skipped"]
    assert "not quantized" in skipped["float"]
    assert "kbm.quantization" in skipped["kbm_int8"]
    assert "LoRA" in skipped["lora"]
    assert skipped["excluded"] == "excluded"


@keras3
def test_keras_round_trip_loads_as_keras_int8(tmp_path):
    # Keras 3.15.1's own int8 MultiHeadAttention does not load back from
    # .keras (accelerated or not), so the model here has kbm's only.
    model = _model(keras_mha=False)
    model.quantize("int8")
    kbm.quantization.accelerate(model)
    x = _x((2, 6, 32), seed=4)
    y = np.asarray(model(x))
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    # A plain Keras int8 model: same variables, Keras's own path.
    assert all(
        STATE not in layer.__dict__ for layer in loaded._flatten_layers()
    )
    y_loaded = np.asarray(loaded(x))
    np.testing.assert_allclose(y_loaded, _keras_path(model, x), 1e-6, 1e-6)
    kbm.quantization.accelerate(loaded)
    np.testing.assert_allclose(np.asarray(loaded(x)), y, 1e-6, 1e-6)


@keras3
def test_loading_weights_repacks(tmp_path):
    model = _model(keras_mha=False)
    model.quantize("int8")
    kbm.quantization.accelerate(model)
    other = _model(keras_mha=False)
    for v in other.trainable_variables:
        v.assign(v * 1.5 + 0.01)
    other.quantize("int8")
    x = _x((2, 6, 32), seed=5)
    y_other = np.asarray(other(x))
    path = os.path.join(tmp_path, "w.weights.h5")
    other.save_weights(path)
    model.load_weights(path)
    assert all(STATE in model.get_layer(n).__dict__ for n in ("gelu", "relu"))
    y = np.asarray(model(x))
    err = np.abs(y - y_other).max() / np.abs(y_other).max()
    assert err < 1e-4, err


@keras3
def test_bad_inputs():
    with pytest.raises(ValueError, match="Keras model or layer"):
        kbm.quantization.accelerate(np.zeros(3))
    with pytest.raises(ValueError, match="built"):
        kbm.quantization.accelerate(keras.layers.Dense(3))
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    with pytest.raises(ValueError, match="exclude"):
        kbm.quantization.accelerate(layer, exclude=3)
    with pytest.raises(ValueError, match="exclude"):
        kbm.quantization.accelerate(layer, exclude=[layer])
    report = kbm.quantization.accelerate(layer, undo=True)
    assert report == {"accelerated": [], "skipped": {}}


@keras3
def test_unsupported_einsum_equation_skipped():
    # The kernel shares axis "b" with input and output: a batched matmul.
    layer = keras.layers.EinsumDense("abc,bcd->abd", (4, 8))
    layer.build((None, 4, 6))
    layer.quantize("int8")
    x = _x((2, 4, 6))
    y = np.asarray(layer(x))
    report = kbm.quantization.accelerate(layer)
    assert "not a matmul" in report["skipped"][layer.name]
    np.testing.assert_array_equal(np.asarray(layer(x)), y)


@keras3
def test_mixed_bfloat16():
    """Keras quantizes bfloat16 inputs in bfloat16, kbm in float32: the
    outputs differ by bfloat16 rounding (measured 1.7% of max |y| here)."""
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _model(keras_mha=False)
    finally:
        keras.config.set_dtype_policy(policy)
    model.quantize("int8")
    x = _x((3, 6, 32), seed=6)
    y_keras = np.asarray(model(x), np.float32)
    report = kbm.quantization.accelerate(model)
    assert not report["skipped"]
    y = model(x)
    assert y.dtype == "bfloat16"
    y = np.asarray(y, np.float32)
    assert np.abs(y - y_keras).max() / np.abs(y_keras).max() < 0.06
