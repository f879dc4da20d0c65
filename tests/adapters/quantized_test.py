"""kbm.adapters on kbm.quantization layers (QLoRA / QDoRA)."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels import adapters
from keras_bigmodels.adapters import lora
from keras_bigmodels.backend import keras
from tests.adapters.lora_test import bert_classifier, bert_inputs


def _path(v):
    """A variable's path: `v.path` on Keras 3, its name on tf-keras."""
    return v.path if hasattr(v, "path") else v.name.split(":")[0]


MODES = ["int8", "int8_weight_only", "int4_weight_only"]
SEQ, DIM = 5, 16


def dense_model(seed=0, activation=None, units=12):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((DIM,))
    out = keras.layers.Dense(units, activation=activation, name="proj")(inp)
    return keras.Model(inp, out)


def einsum_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((SEQ, DIM))
    out = keras.layers.EinsumDense(
        "abc,cde->abde", (SEQ, 2, 8), bias_axes="de", name="proj"
    )(inp)
    return keras.Model(inp, out)


def stack_model(seed=0):
    """Dense -> attention -> head: adapters before and inside attention."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((SEQ, DIM))
    h = keras.layers.Dense(DIM, activation="gelu", name="up")(inp)
    h = keras.layers.MultiHeadAttention(2, 8, name="mha")(h, h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(3, name="head")(h)
    return keras.Model(inp, out)


def quantized(build, mode, **kwargs):
    model = build(**kwargs)
    kbm.quantization.quantize(model, mode, group_size=8)
    return model


def data(shape, seed=1):
    return np.random.RandomState(seed).randn(*shape).astype("float32")


def randomize(model, scale=0.2, seed=3):
    """Non-zero adapter factors (B starts at zero)."""
    rng = np.random.RandomState(seed)
    for state in lora._states(model):
        for adapter in state.adapters.values():
            for var in (adapter.a, adapter.b):
                var.assign(rng.randn(*var.shape).astype("float32") * scale)


def int_weights(model):
    return [
        v.numpy().copy()
        for v in model.weights
        if "kernel_q" in _path(v) or "kernel_scale" in _path(v)
    ]


@pytest.mark.parametrize("mode", MODES)
def test_dense_golden(mode):
    model = quantized(dense_model, mode)
    layer = model.get_layer("proj")
    x = data((6, DIM))
    base = type(layer).call(layer, tf.constant(x)).numpy()
    adapters.enable_lora(model, rank=3, alpha=6, targets=["proj"])
    np.testing.assert_allclose(model(x).numpy(), base, atol=1e-6)
    randomize(model)
    adapter = lora._states(model)[0].adapters["default"]
    a, b = adapter.a.numpy(), adapter.b.numpy()
    expected = base + (x @ a) @ b * 2.0
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-5)
    if mode != "int8":
        # The base is x @ dequantize(W) + bias for weight-only modes.
        w = layer.kernel.numpy()
        np.testing.assert_allclose(base, x @ w + layer.bias.numpy(), atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_einsum_golden(mode):
    model = quantized(einsum_model, mode)
    layer = model.get_layer("proj")
    x = data((3, SEQ, DIM))
    base = type(layer).call(layer, tf.constant(x)).numpy()
    adapters.enable_lora(model, rank=2, targets=["proj"])
    randomize(model)
    adapter = lora._states(model)[0].adapters["default"]
    delta = (adapter.a.numpy() @ adapter.b.numpy()).reshape(DIM, 2, 8)
    expected = base + np.einsum("abc,cde->abde", x, delta)
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["int8_weight_only", "int4_weight_only"])
def test_dora_golden(mode):
    model = quantized(dense_model, mode, activation="relu")
    layer = model.get_layer("proj")
    x = data((6, DIM))
    before = model(x).numpy()
    adapters.enable_dora(model, rank=2, targets=["proj"])
    adapter = lora._states(model)[0].adapters["default"]
    w = layer.kernel.numpy()
    np.testing.assert_allclose(
        adapter.magnitude.numpy(), np.linalg.norm(w, axis=0), rtol=1e-6
    )
    np.testing.assert_allclose(model(x).numpy(), before, atol=1e-5)
    randomize(model)
    adapter.magnitude.assign(adapter.magnitude.numpy() * 1.5)
    v = w + adapter.a.numpy() @ adapter.b.numpy()
    eff = adapter.magnitude.numpy() * v / np.linalg.norm(v, axis=0)
    expected = np.maximum(x @ eff + layer.bias.numpy(), 0.0)
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-4)


def test_dora_einsum_matches_merged_float():
    """DoRA's column scale lands on the right output axes of an einsum."""
    model = quantized(einsum_model, "int8_weight_only")
    layer = model.get_layer("proj")
    x = data((3, SEQ, DIM))
    adapters.enable_dora(model, rank=2, targets=["proj"])
    randomize(model)
    state = lora._states(model)[0]
    adapter = state.adapters["default"]
    adapter.magnitude.assign(
        np.linspace(0.5, 2.0, 16).astype("float32") * adapter.magnitude
    )
    kernel = state.effective_kernel(adapter).numpy()
    expected = np.einsum("abc,cde->abde", x, kernel) + layer.bias.numpy()
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_training_updates_only_adapters(mode, kind):
    model = quantized(stack_model, mode)
    enable = adapters.enable_lora if kind == "lora" else adapters.enable_dora
    paths = enable(
        model,
        rank=4,
        targets=["up", "query", "value"],
        train_also=None,
    )
    assert paths == ["up", "mha/query", "mha/value"]
    trainable = {_path(v) for v in model.trainable_weights}
    assert trainable and all(("lora" in p or "dora" in p) for p in trainable), (
        trainable
    )
    ints = int_weights(model)
    before = {_path(v): v.numpy().copy() for v in model.trainable_weights}
    x = data((32, SEQ, DIM))
    y = data((32, 3), seed=2)
    model.compile(keras.optimizers.Adam(1e-2), loss="mse")
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    last = model.evaluate(x, y, verbose=0)
    assert last < 0.9 * first, (first, last)
    for old, new in zip(ints, int_weights(model)):
        np.testing.assert_array_equal(old, new)
    # The first layer's adapter trains: the gradient reaches it through
    # the attention's quantized ops (straight-through for the input).
    for v in model.trainable_weights:
        if _path(v).startswith("up/"):
            assert not np.array_equal(before[_path(v)], v.numpy()), _path(v)


@pytest.mark.parametrize("mode", MODES)
def test_merge_reports_and_unmerge_restores(mode):
    model = quantized(stack_model, mode)
    adapters.enable_lora(model, rank=4, targets=["up", "query", "value"])
    randomize(model, scale=0.3)
    x = data((4, SEQ, DIM))
    ints = int_weights(model)
    unmerged = model(x).numpy()
    report = adapters.merge(model, data=x)
    assert sorted(report["layers"]) == ["mha/query", "mha/value", "up"]
    for path, layer_report in report["layers"].items():
        assert layer_report["mode"] == mode
        assert 0 < layer_report["max_weight_error"]
        assert layer_report["max_weight_error"] <= layer_report[
            "rounding_bound"
        ] * (1 + 1e-6), path
        assert (
            layer_report["max_weight_error"]
            < 0.1 * layer_report["max_abs_weight"]
        )
    merged = model(x).numpy()
    assert report["max_weight_error"] == max(
        r["max_weight_error"] for r in report["layers"].values()
    )
    np.testing.assert_allclose(
        report["max_output_error"],
        np.abs(merged - unmerged).max(),
        rtol=1e-5,
        atol=1e-7,
    )
    assert report["max_output_error"] < 0.1 * report["max_abs_output"]
    # The merged model runs the plain quantized layers with new weights.
    assert "call" not in model.get_layer("up").__dict__
    changed = [
        not np.array_equal(a, b) for a, b in zip(ints, int_weights(model))
    ]
    assert any(changed)
    adapters.unmerge(model)
    for old, new in zip(ints, int_weights(model)):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(model(x).numpy(), unmerged)


@pytest.mark.parametrize("mode", ["int8_weight_only", "int4_weight_only"])
def test_merged_outputs_within_weight_bound(mode):
    """One weight-only layer: |y_merged - y| <= sum|x| * max weight error."""
    model = quantized(dense_model, mode)
    adapters.enable_lora(model, rank=3, targets=["proj"])
    randomize(model)
    x = data((8, DIM))
    unmerged = model(x).numpy()
    report = adapters.merge(model, data=x)
    merged = model(x).numpy()
    bound = np.abs(x).sum(axis=1, keepdims=True) * report["max_weight_error"]
    assert np.all(np.abs(merged - unmerged) <= bound + 1e-5)
    assert report["max_output_error"] <= bound.max() + 1e-5


def test_bert_encoder_default_targets():
    """kbm's own attention: query/value of a quantized BertEncoder."""
    model = bert_classifier()
    kbm.quantization.quantize(model, "int8")
    x = bert_inputs()
    base = model(x).numpy()
    paths = adapters.enable_dora(model, rank=2)
    assert len(paths) == 4 and all(
        p.endswith(("/query", "/value")) for p in paths
    )
    np.testing.assert_allclose(model(x).numpy(), base, atol=1e-5)
    randomize(model, scale=0.1)
    ints = int_weights(model)
    unmerged = model(x).numpy()
    assert np.abs(unmerged - base).max() > 1e-3
    report = adapters.merge(model, data=x)
    assert sorted(report["layers"]) == sorted(paths)
    assert 0 < report["max_output_error"] < 0.1 * report["max_abs_output"]
    adapters.unmerge(model)
    for old, new in zip(ints, int_weights(model)):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(model(x).numpy(), unmerged)


def test_requantization_error_leaves_model_unmerged():
    model = quantized(dense_model, "int4_weight_only")
    adapters.enable_lora(model, rank=3, targets=["proj"])
    randomize(model)
    x = data((8, DIM))
    ints = int_weights(model)
    y = model(x).numpy()
    report = adapters.requantization_error(model, x)
    assert report["max_output_error"] > 0
    assert report["layers"]["proj"]["group_size"] == 8
    assert not lora._merged_states(model)
    np.testing.assert_array_equal(model(x).numpy(), y)
    for old, new in zip(ints, int_weights(model)):
        np.testing.assert_array_equal(old, new)


def test_float_merge_report_is_empty():
    model = dense_model()
    adapters.enable_lora(model, rank=2, targets=["proj"])
    report = adapters.merge(model)
    assert report == {"layers": {}, "max_weight_error": 0.0}


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_embedding(kind):
    keras.utils.set_random_seed(0)
    inp = keras.Input((SEQ,), dtype="int32")
    out = keras.layers.Embedding(30, 16, name="emb")(inp)
    model = keras.Model(inp, out)
    kbm.quantization.quantize(model, "int4_weight_only", group_size=8)
    ids = np.random.RandomState(0).randint(0, 30, (3, SEQ)).astype("int32")
    base = model(ids).numpy()
    enable = adapters.enable_lora if kind == "lora" else adapters.enable_dora
    enable(model, rank=2, targets=["emb"])
    np.testing.assert_allclose(model(ids).numpy(), base, atol=1e-5)
    randomize(model)
    state = lora._states(model)[0]
    table = state.effective_kernel(state.adapters["default"]).numpy()
    unmerged = model(ids).numpy()
    np.testing.assert_allclose(unmerged, table[ids], atol=1e-5)
    report = adapters.merge(model, data=ids)
    assert 0 < report["max_output_error"] <= report["max_weight_error"]
    adapters.unmerge(model)
    np.testing.assert_array_equal(model(ids).numpy(), unmerged)


@pytest.mark.parametrize("mode", ["int8", "int4_weight_only"])
def test_save_load_adapters_round_trip(tmp_path, mode):
    model = quantized(stack_model, mode)
    adapters.enable_lora(model, rank=4, targets=["up", "query", "value"])
    randomize(model)
    x = data((2, SEQ, DIM))
    expected = model(x).numpy()
    path = str(tmp_path / "q.safetensors")
    adapters.save_adapters(model, path)
    fresh = quantized(stack_model, mode)
    assert adapters.load_adapters(fresh, path) == "default"
    np.testing.assert_allclose(fresh(x).numpy(), expected, atol=1e-6)


def test_float_adapter_loads_on_quantized_base(tmp_path):
    """An adapter trained on the float model loads onto its quantized
    copy (the same matrix shapes)."""
    model = stack_model()
    adapters.enable_lora(model, rank=4, targets=["up", "query", "value"])
    randomize(model, scale=0.05)
    path = str(tmp_path / "f.safetensors")
    adapters.save_adapters(model, path)
    x = data((2, SEQ, DIM))
    expected = model(x).numpy()
    fresh = quantized(stack_model, "int8_weight_only")
    adapters.load_adapters(fresh, path)
    np.testing.assert_allclose(fresh(x).numpy(), expected, atol=0.05)


def test_keras_file_round_trips(tmp_path):
    model = quantized(stack_model, "int8_weight_only")
    adapters.enable_lora(model, rank=4, targets=["up", "query", "value"])
    randomize(model)
    x = data((2, SEQ, DIM))
    unmerged = model(x).numpy()
    ints = int_weights(model)
    # save_model keeps the integer base and the adapter.
    path = str(tmp_path / "m.keras")
    adapters.save_model(model, path)
    loaded = adapters.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), unmerged, atol=1e-6)
    for old, new in zip(ints, int_weights(loaded)):
        np.testing.assert_array_equal(old, new)
    # model.save writes the adapter requantized into the integer weights.
    plain_path = str(tmp_path / "plain.keras")
    model.save(plain_path)
    for old, new in zip(ints, int_weights(model)):
        np.testing.assert_array_equal(old, new)
    plain = keras.models.load_model(plain_path)
    adapters.merge(model)
    np.testing.assert_allclose(plain(x).numpy(), model(x).numpy(), atol=1e-6)
    assert not os.path.exists(plain_path + ".tmp")


def test_refuses_fake_quantized_layers():
    model = dense_model()
    kbm.quantization.quantize_aware(model, "int8")
    with pytest.raises(ValueError, match="fake-quantized"):
        adapters.enable_lora(model, rank=2, targets=["proj"])
