"""kbm.export.export_saved_model: stock-ops SavedModels for TF Serving."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras
from keras_bigmodels.export import saved_model as export_module
from keras_bigmodels.testing import assert_close, last_json_line, run_python


def make_model():
    inputs = keras.Input((12,), name="features")
    h = kbm.layers.FusedDense(16, activation="gelu")(inputs)
    h = kbm.layers.LayerNormalization()(h)
    h = kbm.layers.FusedDense(16, activation="gelu_tanh")(h)
    h = kbm.layers.RMSNormalization()(h)
    outputs = keras.layers.Dense(3, name="logits")(h)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model_and_data():
    model = make_model()
    x = np.random.default_rng(0).standard_normal((6, 12)).astype("float32")
    return model, x, model.predict(x, verbose=0)


def test_stock_ops_export_loads_without_keras_bigmodels(
    model_and_data, tmp_path
):
    model, x, expected = model_and_data
    path = kbm.export.export_saved_model(model, tmp_path / "sm")
    assert kbm.export.find_fused_ops(path) == {}
    np.save(tmp_path / "x.npy", x)
    out = run_python(
        f"""
        import json, sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({path!r})
        fn = loaded.signatures["serving_default"]
        name = list(fn.structured_input_signature[1])[0]
        x = np.load({str(tmp_path / "x.npy")!r})
        outputs = fn(**{{name: tf.constant(x)}})
        y = list(outputs.values())[0].numpy()
        print(json.dumps({{"input": name, "y": y.tolist(),
                          "kbm": [m for m in sys.modules
                                  if m.startswith("keras_bigmodels")]}}))
        """,
        reuse="tf_only",  # One TensorFlow-only process for these loads.
    )
    result = last_json_line(out)
    assert result["kbm"] == []
    assert result["input"] == "features"
    assert_close(np.array(result["y"]), expected, 1e-5, 1e-5)


def test_export_writes_each_weight_once(tmp_path):
    # Keras 3.15's ExportArchive wrote every variable twice (its tracked
    # keras.Variables and the tf.Variables the endpoints capture).
    import tensorflow as tf

    inputs = keras.Input((500,), name="features")
    h = kbm.layers.FusedDense(500)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(h))
    x = np.random.default_rng(0).standard_normal((2, 500)).astype("float32")
    expected = model.predict(x, verbose=0)
    path = kbm.export.export_saved_model(model, tmp_path / "sm")
    prefix = os.path.join(path, "variables", "variables")
    saved = sum(
        int(np.prod(shape))
        for name, shape in tf.train.list_variables(prefix)
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    )
    assert saved == sum(int(np.prod(v.shape)) for v in model.variables)
    loaded = tf.saved_model.load(path)
    assert len(loaded.variables) == len(model.variables)
    y = loaded.signatures["serving_default"](features=tf.constant(x))
    assert_close(list(y.values())[0].numpy(), expected, 1e-5, 1e-5)


def test_saved_model_cli_runs_the_export(model_and_data, tmp_path):
    model, x, expected = model_and_data
    path = kbm.export.export_saved_model(model, tmp_path / "sm")
    np.save(tmp_path / "x.npy", x)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(
        [
            cli,
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"features={tmp_path / 'x.npy'}",
            "--outdir",
            str(tmp_path / "out"),
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )
    (saved,) = list((tmp_path / "out").glob("*.npy"))
    assert_close(np.load(saved), expected, 1e-5, 1e-5)


def test_fused_export_needs_the_op_library(model_and_data, tmp_path, caplog):
    model, x, expected = model_and_data
    with caplog.at_level("WARNING", logger="keras_bigmodels"):
        path = kbm.export.export_saved_model(
            model, tmp_path / "fused", stock_ops=False
        )
    fused = kbm.export.find_fused_ops(path)
    assert {"Kbm>BiasGelu", "Kbm>FusedLayerNorm", "Kbm>FusedRmsNorm"} <= set(
        fused
    )
    assert "needs the keras_bigmodels op library" in caplog.text
    code = f"""
        import json
        import tensorflow as tf
        try:
            tf.saved_model.load({path!r})
            print(json.dumps({{"error": None}}))
        except Exception as e:
            print(json.dumps({{"error": str(e)[:300]}}))
        """
    result = last_json_line(run_python(code, reuse="tf_only"))
    assert "Op type not registered 'Kbm>" in result["error"]
    with_lib = "import keras_bigmodels as kbm\n" + (
        "assert kbm.ops.kernels_available()\n"
    )
    result = last_json_line(
        run_python(with_lib + code.replace("\n        ", "\n"))
    )
    assert result["error"] is None


def test_stock_export_refuses_a_graph_with_fused_ops(
    model_and_data, tmp_path, monkeypatch
):
    model, _, _ = model_and_data

    class KeepKernels:  # A broken switch: kernels stay on during export.
        def __init__(self, enabled):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(export_module.config, "fused_kernels", KeepKernels)
    with pytest.raises(
        RuntimeError,
        match=r"still contains keras_bigmodels "
        r"ops \(Kbm>",
    ):
        kbm.export.export_saved_model(model, tmp_path / "bad")


def test_kernels_are_back_on_after_export(model_and_data, tmp_path):
    model, _, _ = model_and_data
    kbm.export.export_saved_model(model, tmp_path / "sm")
    assert kbm.config.fused_kernels_enabled()
    assert kbm.ops.kernels_available()


TOKENS = np.array([[5, 6, 7, 0, 0, 0], [1, 2, 3, 4, 5, 6]], "int32")


def encoder_classifier(*extra_blocks):
    """Token ids -> embedding, a TransformerEncoder (then `extra_blocks`),
    mean pooling and a 2-way Dense."""
    inputs = keras.Input((6,), dtype="int32", name="token_ids")
    h = kbm.layers.TokenAndPositionEmbedding(10, 6, 16, mask_zero=True)(inputs)
    h = kbm.layers.TransformerEncoder(32, 4)(h)
    for block in extra_blocks:
        h = block(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h))


def serve_tokens_without_kbm(path, tmp_path):
    """`serving_default(token_ids=TOKENS)` of the SavedModel at `path`, run
    by a TensorFlow-only process; asserts it never imported kbm."""
    np.save(tmp_path / "tokens.npy", TOKENS)
    out = run_python(
        f"""
        import json, sys
        import numpy as np
        import tensorflow as tf
        fn = tf.saved_model.load({str(path)!r}).signatures["serving_default"]
        tokens = np.load({str(tmp_path / "tokens.npy")!r})
        y = list(fn(token_ids=tf.constant(tokens)).values())[0].numpy()
        print(json.dumps({{"y": y.tolist(), "kbm": [
            m for m in sys.modules if m.startswith("keras_bigmodels")]}}))
        """,
        reuse="tf_only",
    )
    result = last_json_line(out)
    assert result["kbm"] == []
    return np.array(result["y"])


def test_encoder_model_exports_with_stock_ops(tmp_path):
    model = encoder_classifier(
        kbm.layers.TransformerEncoder(
            32, 4, num_key_value_heads=2, norm="rms", norm_first=True
        )
    )
    expected = model.predict(TOKENS, verbose=0)
    path = kbm.export.export_saved_model(model, tmp_path / "encoder")
    assert kbm.export.find_fused_ops(path) == {}
    y = serve_tokens_without_kbm(path, tmp_path)
    assert_close(y, expected, 1e-5, 1e-5)


def _xla_functions(path):
    """Names of the SavedModel's functions marked for XLA compilation."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    names = []
    for meta in sm.meta_graphs:
        for f in meta.graph_def.library.function:
            attr = f.attr.get("_XlaMustCompile")
            if attr is not None and attr.b:
                names.append(f.signature.name)
    return names


def test_jit_compile_export_serves_the_same_outputs(tmp_path):
    model = encoder_classifier()
    expected = model.predict(TOKENS, verbose=0)
    plain = kbm.export.export_saved_model(model, tmp_path / "plain")
    path = kbm.export.export_saved_model(
        model, tmp_path / "xla", jit_compile=True
    )
    assert kbm.export.find_fused_ops(path) == {}
    assert _xla_functions(path) and not _xla_functions(plain)
    y = serve_tokens_without_kbm(path, tmp_path)
    assert_close(y, expected, 1e-4, 1e-4)


def test_jit_compile_arguments_are_checked(model_and_data, tmp_path):
    model, _, _ = model_and_data
    with pytest.raises(ValueError, match="jit_compile must be True or False"):
        kbm.export.export_saved_model(model, tmp_path / "a", jit_compile=1)
    with pytest.raises(ValueError, match="needs stock_ops=True"):
        kbm.export.export_saved_model(
            model, tmp_path / "b", stock_ops=False, jit_compile=True
        )
