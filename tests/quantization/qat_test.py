"""kbm.quantization.quantize_aware and convert."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras
from keras_bigmodels.testing import assert_close

MODES = ("int8", "int8_weight_only", "int4_weight_only")


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def mlp():
    inputs = keras.Input((32,))
    h = kbm.layers.FusedDense(64, activation="gelu")(inputs)
    h = keras.layers.Dense(64, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(4)(h))


def transformer():
    ids = keras.Input((8,), dtype="int32")
    h = kbm.layers.TokenAndPositionEmbedding(50, 8, 32)(ids)
    h = kbm.layers.TransformerEncoder(64, 4)(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(ids, keras.layers.Dense(2)(h))


def cnn():
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


DATA = {
    "mlp": (mlp, lambda: _x((32, 32)), lambda: _x((32, 4), 1)),
    "transformer": (
        transformer,
        lambda: np.random.default_rng(2).integers(0, 50, (32, 8)),
        lambda: _x((32, 2), 3),
    ),
    "cnn": (cnn, lambda: _x((32, 12, 12, 1)), lambda: _x((32, 3), 4)),
}


def _qat_types(model):
    return {
        type(layer).__name__
        for layer in model._flatten_layers(include_self=False)
        if type(layer).__name__.startswith("QAT")
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(DATA))
def test_fit_then_convert(kind, mode):
    build, xs, ys = DATA[kind]
    model, x, y = build(), xs(), ys()
    kbm.quantization.quantize_aware(model, mode, group_size=8)
    assert _qat_types(model)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    changed = [
        not np.allclose(b, w.numpy())
        for b, w in zip(before, model.trainable_weights)
    ]
    assert all(changed)
    fake = model.predict(x, verbose=0)
    kbm.quantization.convert(model)
    assert not _qat_types(model)
    quantized = model.predict(x, verbose=0)
    # The converted model computes what the fake-quantized one did.
    assert_close(quantized, fake, 1e-4, 1e-4 * np.abs(fake).max())


def test_gradients_flow_through_fake_quantization():
    model = mlp()
    kbm.quantization.quantize_aware(model, "int8")
    x = tf.constant(_x((4, 32)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(model(x) ** 2)
    grads = tape.gradient(loss, [x] + model.trainable_weights)
    for g in grads:
        assert g is not None
        assert np.isfinite(g.numpy()).all() and np.abs(g.numpy()).max() > 0


def test_fake_quantized_kernel_is_the_quantize_result():
    layer = keras.layers.Dense(8)
    layer.build((None, 32))
    kbm.quantization.quantize_aware(
        keras.Sequential([keras.Input((32,)), layer]),
        "int4_weight_only",
        group_size=16,
    )
    q, s = kbm.ops.quantize_kernel(layer._float_weight(), bits=4, group_size=16)
    expected = kbm.ops.dequantize_kernel(
        kbm.ops.pack_kernel(q, bits=4), s, 32, bits=4
    )
    assert_close(layer.kernel, expected, 1e-7, 1e-7)


def test_qat_model_round_trip(tmp_path):
    model, x = transformer(), DATA["transformer"][1]()
    kbm.quantization.quantize_aware(model, "int8", group_size=16)
    expected = model.predict(x, verbose=0)
    path = os.path.join(str(tmp_path), "qat.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert _qat_types(loaded) == _qat_types(model)
    assert_close(loaded.predict(x, verbose=0), expected, 1e-6, 1e-6)
    kbm.quantization.convert(loaded)
    kbm.quantization.convert(model)
    assert_close(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), 1e-6, 1e-6
    )


def test_errors():
    with pytest.raises(ValueError, match="mode='int2'"):
        kbm.quantization.quantize_aware(mlp(), "int2")
    with pytest.raises(ValueError, match="no layer prepared"):
        kbm.quantization.convert(mlp())
    model = mlp()
    kbm.quantization.quantize_aware(model, "int8")
    with pytest.raises(ValueError, match="already prepared"):
        kbm.quantization.quantize_aware(model, "int4_weight_only")


def test_converted_model_exports(tmp_path):
    model = cnn()
    x = _x((4, 12, 12, 1))
    kbm.quantization.quantize_aware(model, "int8")
    model(x)
    kbm.quantization.convert(model)
    expected = np.asarray(model(x))
    kbm.export.export_saved_model(model, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    serve = loaded.signatures["serving_default"]  # On both Keras lines.
    (name,) = serve.structured_input_signature[1]
    (served,) = serve(**{name: tf.constant(x)}).values()
    assert_close(np.asarray(served), expected, 1e-4, 1e-4)
