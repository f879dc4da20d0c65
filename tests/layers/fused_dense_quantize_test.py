"""kbm.layers.FusedDense under Keras 3's own quantisation (`quantize`).

Keras 3 only: tf-keras has no quantisation API. Keras's own Dense tests
run with FusedDense in `tests/keras_compat/dense_test.py`; these add the
fused activations, the kbm layers built from FusedDense sublayers, and
the numbers.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from keras_bigmodels.testing import assert_close, random_tensor

keras3_only = pytest.mark.skipif(
    IS_LEGACY_KERAS, reason="tf-keras has no quantization API (Keras 3 only)"
)

# Largest |quantised - float| allowed, relative to the largest |float
# output|, per mode, for unit-scale inputs and glorot-uniform kernels
# (about 2x the errors measured: int8 0.005-0.008, int4 0.06-0.08,
# float8 0.035-0.054).
# int8: per-channel weights and per-row activations (~2 x 1/254);
# int4: per-channel 16-level weights (~1/15); float8: e4m3 (3 mantissa
# bits, ~2^-4 per operand).
TOLERANCE = {"int8": 0.02, "int4": 0.15, "float8": 0.1}
MODES = sorted(TOLERANCE)


def relative_error(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def fused_model(activation="gelu"):
    inputs = keras.Input((6, 32))
    h = kbm.layers.FusedDense(64, activation=activation, name="up")(inputs)
    outputs = kbm.layers.FusedDense(
        16, bias_initializer="random_normal", name="down"
    )(h)
    return keras.Model(inputs, outputs)


@keras3_only
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", None])
def test_layer_quantize_is_close_to_float(mode, activation):
    x = random_tensor((4, 6, 32), tf.float32, seed=1)
    layer = kbm.layers.FusedDense(
        48, activation=activation, bias_initializer="random_normal"
    )
    expected = layer(x)
    layer.quantize(mode)
    assert layer.quantization_mode == mode
    actual = layer(x)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < TOLERANCE[mode]


@keras3_only
@pytest.mark.parametrize("mode", MODES)
def test_quantized_layer_matches_quantized_keras_dense(mode):
    # Same float weights, same quantisation: the same quantised function.
    x = random_tensor((8, 32), tf.float32, seed=2)
    ours = kbm.layers.FusedDense(24, activation="gelu")
    ref = keras.layers.Dense(24, activation="gelu")
    ours.build(x.shape)
    ref.build(x.shape)
    ref.set_weights(ours.get_weights())
    ours.quantize(mode)
    ref.quantize(mode)
    assert [v.path.split("/")[-1] for v in ours.variables] == [
        v.path.split("/")[-1] for v in ref.variables
    ]
    assert_close(ours(x), ref(x), 1e-6, 1e-6)


@keras3_only
@pytest.mark.parametrize("mode", MODES)
def test_model_quantize(mode):
    model = fused_model()
    x = random_tensor((3, 6, 32), tf.float32, seed=3)
    expected = model(x)
    model.quantize(mode)
    assert [layer.quantization_mode for layer in model.layers[1:]] == [
        mode,
        mode,
    ]
    assert relative_error(model(x), expected) < TOLERANCE[mode]


@keras3_only
def test_subclass_needs_type_check_false():
    # As Keras's Dense does for its own subclasses.
    class MyFusedDense(kbm.layers.FusedDense):
        pass

    layer = MyFusedDense(8)
    layer.build((None, 4))
    with pytest.raises(NotImplementedError):
        layer.quantize("int8")
    layer.quantize("int8", type_check=False)
    assert layer.quantization_mode == "int8"


@keras3_only
@pytest.mark.parametrize("mode", MODES)
def test_quantized_keras_round_trip(tmp_path, mode):
    model = fused_model(activation="gelu_tanh")
    x = random_tensor((3, 6, 32), tf.float32, seed=4)
    model.quantize(mode)
    expected = model(x)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("up"), kbm.layers.FusedDense)
    assert loaded.get_layer("up").quantization_mode == mode
    assert loaded.get_layer("up").get_config()["activation"] == "gelu_tanh"
    assert_close(loaded(x), expected, 0, 0)
    with kbm.config.fused_kernels(False):
        reloaded = keras.saving.load_model(path)
        assert_close(reloaded(x), expected, 1e-6, 1e-6)


@keras3_only
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_lora_on_quantized_layer_trains_only_lora(mode):
    model = fused_model()
    model.quantize(mode)
    up = model.get_layer("up")
    up.enable_lora(4)
    assert sorted(v.path.split("/")[-1] for v in up.trainable_variables) == [
        "bias",
        "lora_kernel_a",
        "lora_kernel_b",
    ]
    up.bias.trainable = False
    model.get_layer("down").trainable = False
    frozen = {v.path: np.array(v) for v in model.non_trainable_variables}
    lora_b = np.array(up.lora_kernel_b)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 6, 32)).astype("float32")
    y = rng.standard_normal((32, 6, 16)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    loss = model.fit(x, y, epochs=4, batch_size=8, verbose=0).history["loss"]
    assert loss[-1] < loss[0]
    assert sorted(v.path.split("/")[-1] for v in model.trainable_variables) == [
        "lora_kernel_a",
        "lora_kernel_b",
    ]
    assert np.max(np.abs(np.array(up.lora_kernel_b) - lora_b)) > 0
    for v in model.non_trainable_variables:
        np.testing.assert_array_equal(np.array(v), frozen[v.path])


@keras3_only
@pytest.mark.parametrize("mode", MODES)
def test_transformer_encoder_quantizes_through_model_quantize(mode):
    inputs = keras.Input((8, 32))
    outputs = kbm.layers.TransformerEncoder(64, 4, activation="gelu")(inputs)
    model = keras.Model(inputs, outputs)
    x = random_tensor((2, 8, 32), tf.float32, seed=6)
    expected = model(x)
    model.quantize(mode)
    quantized = {
        layer.name: layer.quantization_mode
        for layer in model._flatten_layers()
        if getattr(layer, "quantization_mode", None)
    }
    assert set(quantized.values()) == {mode}
    # The FFN (FusedDense) and the attention projections (EinsumDense).
    assert {
        "feedforward_intermediate_dense",
        "feedforward_output_dense",
        "query",
        "key",
        "value",
        "attention_output",
    } <= set(quantized)
    # Post-LN output (unit scale): compare absolute error.
    assert (
        np.max(np.abs(np.asarray(model(x)) - expected)) < 4 * (TOLERANCE[mode])
    )


@pytest.mark.skipif(not IS_LEGACY_KERAS, reason="the tf-keras line's error")
def test_tf_keras_says_quantize_needs_keras3():
    layer = kbm.layers.FusedDense(8)
    layer.build((None, 4))
    with pytest.raises(NotImplementedError, match="needs Keras 3"):
        layer.quantize("int8")


def composite_model(kind):
    inputs = keras.Input((8, 32))
    if kind == "MultiHeadAttention":
        outputs = kbm.layers.MultiHeadAttention(2, 16)(inputs, inputs)
    elif kind == "GroupedQueryAttention":
        outputs = kbm.layers.GroupedQueryAttention(16, 4, 2)(inputs, inputs)
    else:
        outputs = getattr(kbm.layers, kind)(64, 2)(inputs)
    return keras.Model(inputs, outputs)


@keras3_only
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kind",
    [
        "TransformerEncoder",
        "TransformerDecoder",
        "MultiHeadAttention",
        "GroupedQueryAttention",
    ],
)
def test_quantized_composite_keras_round_trip(tmp_path, kind, mode):
    # The sublayers' quantized policies travel in the composite's `dtype`
    # (a DTypePolicyMap); a loaded model saves and loads again.
    model = composite_model(kind)
    x = random_tensor((2, 8, 32), tf.float32, seed=7)
    model.quantize(mode)
    expected = model(x)
    for step in ("first", "second"):
        path = str(tmp_path / f"{step}.keras")
        model.save(path)
        model = keras.saving.load_model(path)
        modes = {
            layer.quantization_mode
            for layer in model._flatten_layers()
            if getattr(layer, "quantization_mode", None)
        }
        assert modes == {mode}
        assert_close(model(x), expected, 0, 0, what=f"{step} load")


@keras3_only
@pytest.mark.parametrize("mode", ["gptq", "awq"])
def test_calibrated_modes_through_a_transformer_encoder(mode):
    # GPTQ / AWQ calibrate the Dense and EinsumDense sublayers of the
    # sequential blocks Keras is given: here a kbm TransformerEncoder,
    # whose FFN is FusedDense.
    keras.utils.set_random_seed(0)
    tokens = keras.Input((8,), dtype="int32")
    embedding = keras.layers.Embedding(50, 32)
    block = kbm.layers.TransformerEncoder(64, 4, activation="gelu")
    model = keras.Model(tokens, block(embedding(tokens)))
    rng = np.random.default_rng(8)
    dataset = [rng.integers(0, 50, (1, 8)).astype("int32") for _ in range(4)]
    x = np.concatenate(dataset)
    expected = model(x)
    config_cls = {
        "gptq": keras.quantizers.GPTQConfig,
        "awq": keras.quantizers.AWQConfig,
    }[mode]
    extra = {"weight_bits": 4} if mode == "gptq" else {}
    config = config_cls(
        dataset=dataset,
        tokenizer=lambda sample: sample,
        num_samples=4,
        sequence_length=8,
        group_size=16,
        quantization_layer_structure={
            "pre_block_layers": [embedding],
            "sequential_blocks": [block],
        },
        **extra,
    )
    model.quantize(
        mode, config=config, filters=lambda layer: layer is not embedding
    )
    for layer in (block._ffn_intermediate, block._ffn_output):
        assert isinstance(layer, kbm.layers.FusedDense)
        assert layer.quantization_mode == mode
    # 4-bit weights, post-LN output of unit scale (measured: 0.2; plain
    # int4 on the same block: 0.23).
    assert np.max(np.abs(np.asarray(model(x)) - expected)) < 0.5
