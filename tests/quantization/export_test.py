"""Quantized models through kbm.export.export_saved_model."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras
from keras_bigmodels.testing import assert_close, last_json_line, run_python


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((256,), name="features")
    h = kbm.layers.FusedDense(512, activation="gelu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    h = kbm.layers.LayerNormalization()(h)
    outputs = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs)


def _dir_size(path):
    return sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(path)
        for f in files
    )


def _x():
    return np.random.default_rng(0).standard_normal((4, 256)).astype("float32")


def _uses_fused_quantized_op():
    """Whether kbm.ops.quantized_matmul traces to a Kbm> op here."""
    q, s = kbm.ops.quantize_kernel(tf.ones((8, 8)))
    fn = tf.function(
        lambda x: kbm.ops.quantized_matmul(x, kbm.ops.pack_kernel(q), s)
    ).get_concrete_function(tf.TensorSpec((2, 8), tf.float32))
    return any(op.type.startswith("Kbm>") for op in fn.graph.get_operations())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized_exports")
    x = _x()
    out = {}
    for mode in ("float32", "int8", "int8_weight_only", "int4_weight_only"):
        model = make_model()
        if mode != "float32":
            kbm.quantization.quantize(model, mode)
        path = kbm.export.export_saved_model(model, root / mode)
        # The weights' bytes: tf-keras also saves a traced call function
        # per layer, a graph of fixed size (the reference ops' nodes) that
        # does not grow with the weights.
        size = _dir_size(os.path.join(path, "variables"))
        out[mode] = (path, model.predict(x, verbose=0), size)
    report = {mode: size for mode, (_, _, size) in out.items()}
    print("on-disk SavedModel variable bytes:", json.dumps(report))
    return out, x


def test_stock_ops_export_has_integer_weights_and_no_kbm_ops(exports):
    out, _ = exports
    for mode in ("int8", "int8_weight_only", "int4_weight_only"):
        path = out[mode][0]
        assert kbm.export.find_fused_ops(path) == {}
        loaded = tf.saved_model.load(path)
        dtypes = [v.dtype for v in loaded.variables]
        assert tf.int8 in dtypes
        float_elems = sum(
            int(np.prod(v.shape))
            for v in loaded.variables
            if v.dtype.is_floating
        )
        assert float_elems < 20_000  # Scales, biases, LayerNorm only.


def test_export_sizes(exports):
    out, _ = exports
    size = {mode: s for mode, (_, _, s) in out.items()}
    assert size["int8"] < 0.4 * size["float32"]
    assert size["int8_weight_only"] < 0.4 * size["float32"]
    assert size["int4_weight_only"] < size["int8"]


def test_export_loads_without_keras_bigmodels(exports, tmp_path):
    out, x = exports
    np.save(tmp_path / "x.npy", x)
    for mode in ("int8", "int4_weight_only"):
        path, expected, _ = out[mode]
        result = last_json_line(
            run_python(
                f"""
                import json, sys
                import numpy as np
                import tensorflow as tf
                loaded = tf.saved_model.load({path!r})
                fn = loaded.signatures["serving_default"]
                x = np.load({str(tmp_path / "x.npy")!r})
                y = list(fn(features=tf.constant(x)).values())[0].numpy()
                kbm = [m for m in sys.modules if m.startswith("keras_bigm")]
                print(json.dumps({{"y": y.tolist(), "kbm": kbm}}))
                """,
                reuse="tf_only",
            )
        )
        assert result["kbm"] == []
        assert_close(np.array(result["y"]), expected, 1e-5, 1e-5)


def test_export_keeps_fused_ops_when_asked(tmp_path):
    model = make_model()
    kbm.quantization.quantize(model, "int8")
    path = kbm.export.export_saved_model(
        model, tmp_path / "fused", stock_ops=False
    )
    fused = kbm.export.find_fused_ops(path)
    has_kernel = kbm.ops.kernels_available() and _uses_fused_quantized_op()
    assert any(op.startswith("Kbm>Quantized") for op in fused) == bool(
        has_kernel
    )


def test_quantized_bert_encoder_exports_stock_ops(tmp_path):
    model = kbm.models.BertEncoder(
        vocabulary_size=60,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    ids = np.random.default_rng(3).integers(1, 60, (2, 9)).astype("int32")
    x = {
        "token_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "padding_mask": np.ones_like(ids),
    }
    kbm.quantization.quantize(model, "int8")
    expected = model.predict(x, verbose=0)
    path = kbm.export.export_saved_model(model, tmp_path / "bert")
    assert kbm.export.find_fused_ops(path) == {}
    loaded = tf.saved_model.load(path)
    assert tf.int8 in [v.dtype for v in loaded.variables]
    fn = loaded.signatures["serving_default"]
    y = list(fn(**{k: tf.constant(v) for k, v in x.items()}).values())[0]
    assert_close(y, expected, 1e-5, 1e-5)
