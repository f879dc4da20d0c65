"""kbm.quantization.quantize: modes, layers, errors, .keras round trips."""

import os

import numpy as np
import pytest

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from keras_bigmodels.testing import assert_close, last_json_line, run_python

MODES = ("int8", "int8_weight_only", "int4_weight_only")
# Max |quantized - float| / max |float| per mode, for the small random
# models below (int4 with 7 levels per sign is coarse).
TOLERANCE = {"int8": 0.03, "int8_weight_only": 0.03, "int4_weight_only": 0.4}


def _rel_err(y, ref):
    return float(np.abs(np.asarray(y) - ref).max() / np.abs(ref).max())


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def dense_model():
    inputs = keras.Input((64,))
    h = kbm.layers.FusedDense(64, activation="gelu", name="ffn_in")(inputs)
    h = keras.layers.Dense(32, activation="relu", name="hidden")(h)
    h = kbm.layers.FusedDense(32, activation="gelu_tanh", name="ffn_out")(h)
    h = keras.layers.Dense(48, activation="tanh", name="other_act")(h)
    return keras.Model(inputs, keras.layers.Dense(8, name="logits")(h))


def attention_model():
    inputs = keras.Input((6, 32))
    h = keras.layers.MultiHeadAttention(4, 8, name="mha")(inputs, inputs)
    h = kbm.layers.MultiHeadAttention(4, 8, name="kbm_mha")(h, h)
    h = keras.layers.EinsumDense(
        "abc,cd->abd", (None, 16), bias_axes="d", name="proj"
    )(h)
    return keras.Model(inputs, h)


def embedding_model():
    ids = keras.Input((7,), dtype="int32")
    h = kbm.layers.TokenAndPositionEmbedding(40, 7, 32, name="tpe")(ids)
    h2 = keras.layers.Embedding(40, 32, name="emb")(ids)
    h = keras.layers.Add()([h, h2])
    return keras.Model(ids, keras.layers.Dense(4, name="head")(h))


def conv_model():
    inputs = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))


MODELS = {
    "dense": (dense_model, lambda: _x((5, 64))),
    "attention": (attention_model, lambda: _x((3, 6, 32))),
    "embedding": (
        embedding_model,
        lambda: np.random.default_rng(1).integers(0, 40, (4, 7)),
    ),
    "conv": (conv_model, lambda: _x((2, 10, 10, 3))),
}


def _short(name):
    """A variable's own name (tf-keras adds its layer and ":0")."""
    return name.split("/")[-1].split(":")[0]


def _quantized_types(model):
    return sorted(
        {
            type(layer).__name__
            for layer in model._flatten_layers()
            if type(layer).__name__.startswith("Quantized")
        }
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_modes_close_to_float(kind, mode):
    build, data = MODELS[kind]
    model, x = build(), data()
    expected = model.predict(x, verbose=0)
    same = kbm.quantization.quantize(model, mode, group_size=16)
    assert same is model
    y = model.predict(x, verbose=0)
    assert y.shape == expected.shape
    assert _rel_err(y, expected) < TOLERANCE[mode]
    wanted = {
        "dense": ["QuantizedDense"],
        "attention": ["QuantizedEinsumDense"],
        "embedding": ["QuantizedDense", "QuantizedEmbedding"],
        "conv": ["QuantizedConv2D", "QuantizedDense"],
    }[kind]
    assert [t for t in _quantized_types(model) if "Model" not in t] == (
        wanted
    ) or set(wanted) <= set(_quantized_types(model))
    # No float kernel is left in the converted layers.
    for layer in model._flatten_layers():
        if type(layer).__name__.startswith("Quantized") and layer is not model:
            names = [_short(v.name) for v in layer.weights]
            assert "kernel" not in names and "embeddings" not in names


def test_weights_are_integer_and_smaller():
    model = dense_model()
    floats = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    kbm.quantization.quantize(model, "int8")
    dtypes = {_short(w.name): w.dtype for w in model.weights}
    assert dtypes["kernel_q"] == "int8"
    size = sum(
        int(np.prod(w.shape)) * (1 if w.dtype == "int8" else 4)
        for w in model.weights
    )
    assert size < 0.4 * floats


def test_dense_matches_op_reference():
    layer = keras.layers.Dense(24, activation="relu")
    x = _x((3, 40))
    layer(x)
    kernel, bias = (w.numpy() for w in layer.weights)
    kbm.quantization.quantize(layer, "int8")
    q, s = kbm.ops.quantize_kernel(kernel)
    expected = kbm.ops.quantized_matmul(
        x,
        kbm.ops.pack_kernel(q),
        s,
        bias,
        activation="relu",
        use_fused_kernel=False,
    )
    assert_close(layer(x), expected, 1e-5, 1e-5)
    assert_close(layer.kernel, q.numpy() * s.numpy(), 1e-7, 1e-7)


@pytest.mark.parametrize(
    "equation,kernel_in,bias_axes,out",
    [
        ("abc,cde->abde", (5, 8), "de", (None, 2, 4)),  # MHA query.
        ("abcd,cde->abe", (5, 2, 4), "e", (None, 6)),  # MHA output.
        ("ab,bc->ac", (8,), "c", (6,)),
        ("abc,dc->abd", (5, 8), "d", (None, 6)),  # Kernel [N, K].
        ("abc,cd->adb", (5, 8), None, (6, None)),  # Transposed output.
    ],
)
def test_einsum_equations(equation, kernel_in, bias_axes, out):
    layer = keras.layers.EinsumDense(equation, out, bias_axes=bias_axes)
    x = _x((3,) + kernel_in)
    expected = layer(x).numpy()
    kbm.quantization.quantize(layer, "int8_weight_only")
    assert type(layer).__name__ == "QuantizedEinsumDense"
    assert _rel_err(layer(x), expected) < 0.02
    assert layer.kernel.shape == tuple(layer._kbm_plan["kernel_shape"])


@pytest.mark.parametrize("mode", MODES[1:])
def test_weight_only_equals_float_layer_with_dequantized_kernel(mode):
    """Weight-only is exact up to float rounding given its own weights."""
    for layer, x in (
        (keras.layers.Dense(24, activation="gelu"), _x((3, 32))),
        (
            keras.layers.EinsumDense(
                "abc,cde->abde", (None, 2, 8), bias_axes="de"
            ),
            _x((2, 5, 32)),
        ),
    ):
        layer(x)
        float_layer = layer.from_config(layer.get_config())
        float_layer(x)
        kbm.quantization.quantize(layer, mode, group_size=16)
        float_layer.set_weights([layer.kernel.numpy(), layer.bias.numpy()])
        assert_close(layer(x), float_layer(x), 2e-5, 2e-5)


def test_exclude_by_name_and_predicate():
    model = dense_model()
    kbm.quantization.quantize(model, "int8", exclude=["logits", "hidden"])
    assert type(model.get_layer("logits")) is keras.layers.Dense
    assert type(model.get_layer("hidden")) is keras.layers.Dense
    assert type(model.get_layer("ffn_in")).__name__ == "QuantizedDense"

    model = attention_model()
    kbm.quantization.quantize(
        model, "int8", exclude=lambda layer: layer.name == "mha"
    )
    mha = model.get_layer("mha")
    assert all(
        type(sub) is keras.layers.EinsumDense
        for sub in mha._flatten_layers(include_self=False)
        if isinstance(sub, keras.layers.EinsumDense)
    )
    assert type(model.get_layer("proj")).__name__ == "QuantizedEinsumDense"
    with pytest.raises(ValueError, match="exclude must be"):
        kbm.quantization.quantize(dense_model(), "int8", exclude=[3])


def test_idempotent_and_mode_conflict():
    model = dense_model()
    x = _x((2, 64))
    kbm.quantization.quantize(model, "int8")
    y = model.predict(x, verbose=0)
    kbm.quantization.quantize(model, "int8")
    np.testing.assert_array_equal(model.predict(x, verbose=0), y)
    with pytest.raises(ValueError, match="int4_weight_only"):
        kbm.quantization.quantize(model, "int4_weight_only")


@pytest.mark.parametrize("mode", ["int4", "float8", "", None, 8])
def test_bad_mode(mode):
    with pytest.raises(ValueError, match=f"mode={mode!r}"):
        kbm.quantization.quantize(dense_model(), mode)


@pytest.mark.parametrize("group_size", [0, -2, 3, 1.5, True, "128"])
def test_bad_group_size(group_size):
    with pytest.raises(ValueError, match="group_size="):
        kbm.quantization.quantize(
            dense_model(), "int4_weight_only", group_size=group_size
        )


def test_group_size_must_divide_input_and_nothing_changes():
    inputs = keras.Input((48,))
    h = keras.layers.Dense(8, name="a")(
        keras.layers.Dense(48, name="b")(
            keras.layers.Dense(48, name="c")(inputs)
        )
    )
    model = keras.Model(inputs, h)
    with pytest.raises(ValueError, match="group_size=32 does not divide"):
        kbm.quantization.quantize(model, "int4_weight_only", group_size=32)
    # Validated before converting: no layer was changed.
    assert all(type(layer) is keras.layers.Dense for layer in model.layers[1:])
    # A group larger than the input: one group over it.
    kbm.quantization.quantize(model, "int4_weight_only", group_size=64)
    assert model.get_layer("a").quantization_spec["group_size"] == 48


def test_unbuilt_model_raises():
    model = keras.Sequential([keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="not built"):
        kbm.quantization.quantize(model, "int8")


def test_calibration_data_is_accepted_and_ignored():
    model = dense_model()
    kbm.quantization.quantize(model, "int8", calibration_data=_x((4, 64)))
    assert type(model.get_layer("hidden")).__name__ == "QuantizedDense"


def test_input_gets_straight_through_gradient():
    import tensorflow as tf

    model = dense_model()
    kbm.quantization.quantize(model, "int8")
    x = tf.constant(_x((3, 64)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(model(x))
    grad = tape.gradient(y, x)
    assert grad is not None and np.isfinite(grad.numpy()).all()


def tiny_bert():
    return kbm.models.BertEncoder(
        vocabulary_size=60,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=16,
    )


def bert_inputs():
    ids = np.random.default_rng(3).integers(1, 60, (2, 9)).astype("int32")
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    return {
        "token_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "padding_mask": mask,
    }


@pytest.mark.parametrize("mode", MODES)
def test_bert_encoder_quantizes_and_runs(mode):
    model = tiny_bert()
    x = bert_inputs()
    expected = model.predict(x, verbose=0)
    kbm.quantization.quantize(model, mode, group_size=32)
    assert isinstance(model, kbm.models.BertEncoder)
    assert type(model).__name__ == "QuantizedBertEncoder"
    types = _quantized_types(model)
    assert {"QuantizedDense", "QuantizedEinsumDense", "QuantizedEmbedding"} <= (
        set(types)
    )
    y = model.predict(x, verbose=0)
    assert _rel_err(y, expected) < TOLERANCE[mode]


def _round_trip(model, x, tmp_path, name):
    expected = model.predict(x, verbose=0)
    path = os.path.join(str(tmp_path), f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert_close(loaded.predict(x, verbose=0), expected, 1e-6, 1e-6)
    return path, expected


ROUND_TRIPS = {
    "dense": (dense_model, MODELS["dense"][1]),
    "attention": (attention_model, MODELS["attention"][1]),
    "embedding": (embedding_model, MODELS["embedding"][1]),
    "conv": (conv_model, MODELS["conv"][1]),
    "bert": (tiny_bert, bert_inputs),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(ROUND_TRIPS))
def test_keras_round_trip(kind, mode, tmp_path):
    build, data = ROUND_TRIPS[kind]
    model, x = build(), data()
    kbm.quantization.quantize(model, mode, group_size=16)
    _round_trip(model, x, tmp_path, kind)


def test_sequential_round_trip(tmp_path):
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(8), keras.layers.Dense(2)]
    )
    kbm.quantization.quantize(model, "int8")
    _round_trip(model, _x((3, 16)), tmp_path, "seq")


@pytest.mark.parametrize("mode", ["int8", "int4_weight_only"])
def test_round_trip_with_kernels_disabled(mode, tmp_path):
    """A fresh process without the op library gives the same outputs."""
    model = tiny_bert()
    x = bert_inputs()
    kbm.quantization.quantize(model, mode, group_size=16)
    path, expected = _round_trip(model, x, tmp_path, "bert")
    np.savez(os.path.join(str(tmp_path), "x.npz"), **x)
    out = run_python(
        f"""
        import json
        import numpy as np
        import keras_bigmodels as kbm
        from keras_bigmodels.backend import keras
        kbm.quantization  # Registers the quantized classes.
        model = keras.models.load_model({path!r})
        x = dict(np.load({os.path.join(str(tmp_path), "x.npz")!r}))
        print(json.dumps({{
            "kernels": bool(kbm.ops.kernels_available()),
            "y": model.predict(x, verbose=0).tolist()}}))
        """,
        env={"KERAS_BIGMODELS_DISABLE_FUSED": "1"},
    )
    result = last_json_line(out)
    assert result["kernels"] is False
    assert_close(np.array(result["y"]), expected, 1e-5, 1e-5)


def test_pack_version_mismatch_refuses_to_load():
    layer = keras.layers.Dense(4)
    layer.build((None, 8))
    kbm.quantization.quantize(layer, "int8")
    config = layer.get_config()
    config["kbm_quantization"]["pack_version"] = 999
    # Keras wraps the error from_config raises in a TypeError.
    with pytest.raises((TypeError, ValueError), match="layout version 999"):
        kbm.quantization.QuantizedDense.from_config(config)


@pytest.mark.skipif(
    not IS_LEGACY_KERAS, reason="tf-keras's legacy h5 / SavedModel formats"
)
@pytest.mark.parametrize("fmt", ["h5", "tf"])
@pytest.mark.parametrize("kind", ["attention", "embedding", "conv"])
def test_legacy_formats_round_trip(kind, fmt, tmp_path):
    build, data = MODELS[kind]
    model, x = build(), data()
    kbm.quantization.quantize(model, "int8", group_size=16)
    expected = model.predict(x, verbose=0)
    path = os.path.join(str(tmp_path), "m.h5" if fmt == "h5" else "m")
    model.save(path, save_format=fmt)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert _quantized_types(loaded) == _quantized_types(model)
    assert_close(loaded.predict(x, verbose=0), expected, 1e-6, 1e-6)
