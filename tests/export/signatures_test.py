"""Named serving signatures and in-graph explain signatures
(`kbm.export.export_saved_model(..., signatures=...)`)."""

import json

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras
from keras_bigmodels.export import saved_model as export_module
from keras_bigmodels.testing import assert_close, last_json_line, run_python
from tests.export._models import (
    MASK,
    TOKENS,
    dense_classifier,
    encoder_classifier,
    float_batch,
    token_classifier,
)

IG = kbm.explain.IntegratedGradients
LIG = kbm.explain.LayerIntegratedGradients
ATOL = 1e-4  # Exported (stock ops) vs kbm.explain (fused kernels).


def encoder_oracle(model, target, n_steps, method):
    """kbm.explain.LayerIntegratedGradients on the encoder with the padding
    mask held fixed (LayerIntegratedGradients takes one input array)."""
    mask = tf.constant(MASK)

    def with_mask(ids, training=False):
        copies = tf.shape(ids)[0] // len(MASK)  # Path points: step major.
        return model([ids, tf.tile(mask, [copies, 1])], training=training)

    lig = LIG(with_mask, model.get_layer("embedding"))
    return lig.attribute(
        TOKENS,
        target=target,
        baselines=0,
        n_steps=n_steps,
        method=method,
        return_convergence_delta=True,
    )


@pytest.fixture(scope="module")
def encoder_export(tmp_path_factory):
    model = encoder_classifier()
    path = kbm.export.export_saved_model(
        model,
        tmp_path_factory.mktemp("encoder") / "1",
        signatures={
            "explain": kbm.export.ExplainSignature(
                LIG, layer="embedding", n_steps=16, method="riemann_trapezoid"
            )
        },
    )
    return model, path


def test_stock_export_serves_named_inputs_without_keras_bigmodels(
    encoder_export, tmp_path
):
    encoder, encoder_path = encoder_export
    single = dense_classifier(name=None)  # Keras names the input.
    assert isinstance(single.layers[0], keras.layers.InputLayer)
    single_input = single.layers[0].name
    single_path = kbm.export.export_saved_model(single, tmp_path / "single")
    x = float_batch()
    target = np.array([-1, 0, 2], "int32")
    for name, value in [("x", x), ("tokens", TOKENS), ("mask", MASK)]:
        np.save(tmp_path / f"{name}.npy", value)
    assert kbm.export.find_fused_ops(encoder_path) == {}
    assert kbm.export.find_fused_ops(single_path) == {}
    out = run_python(
        f"""
        import json, sys
        import numpy as np
        import tensorflow as tf

        def load(path):
            return tf.saved_model.load(path).signatures

        def arr(name):
            return tf.constant(np.load({str(tmp_path)!r} + f"/{{name}}.npy"))

        def keys(fn):
            return sorted(fn.structured_input_signature[1])

        def numpy(outputs):
            return {{k: v.numpy().tolist() for k, v in outputs.items()}}

        encoder = load({encoder_path!r})
        single = load({single_path!r})
        feeds = dict(token_ids=arr("tokens"), padding_mask=arr("mask"))
        print(json.dumps({{
            "encoder_inputs": keys(encoder["serving_default"]),
            "explain_inputs": keys(encoder["explain"]),
            "single_inputs": keys(single["serving_default"]),
            "encoder": numpy(encoder["serving_default"](**feeds)),
            "explain": numpy(encoder["explain"](
                target=tf.constant({target.tolist()}, tf.int32), **feeds)),
            "single": numpy(single["serving_default"](
                **{{{single_input!r}: arr("x")}})),
            "kbm": [m for m in sys.modules
                    if m.startswith("keras_bigmodels")],
        }}))
        """,
        reuse="tf_only",  # Shared with tests/export/saved_model_test.py.
    )
    result = last_json_line(out)
    assert result["kbm"] == []
    assert result["encoder_inputs"] == ["padding_mask", "token_ids"]
    assert result["explain_inputs"] == ["padding_mask", "target", "token_ids"]
    assert result["single_inputs"] == [single_input]
    assert list(result["encoder"]) == ["logits"]
    assert list(result["single"]) == ["logits"]
    assert_close(
        np.array(result["encoder"]["logits"]),
        encoder.predict([TOKENS, MASK], verbose=0),
        1e-5,
        1e-5,
    )
    assert_close(
        np.array(result["single"]["logits"]),
        single.predict(x, verbose=0),
        1e-5,
        1e-5,
    )
    explained = np.array(result["explain"]["target"])
    predicted = encoder.predict([TOKENS, MASK], verbose=0).argmax(-1)
    np.testing.assert_array_equal(explained, [predicted[0], 0, 2])
    attr, delta = encoder_oracle(encoder, explained, 16, "riemann_trapezoid")
    assert_close(
        np.array(result["explain"]["attributions"]), attr, 0, ATOL, "attr"
    )
    assert_close(
        np.array(result["explain"]["convergence_delta"]), delta, 0, ATOL
    )


def test_explain_signatures_match_kbm_explain(tmp_path):
    model = dense_classifier()
    x = float_batch()
    baseline = np.linspace(-0.5, 0.5, 12).astype("float32")
    sig = kbm.export.ExplainSignature
    path = kbm.export.export_saved_model(
        model,
        tmp_path / "sm",
        signatures={
            "explain": sig(IG, n_steps=32, baseline=0.0),
            "explain_trapezoid": sig(
                IG, n_steps=16, method="riemann_trapezoid", baseline=baseline
            ),
            "explain_predicted": sig(IG, n_steps=8, target_input=False),
            "saliency": sig(kbm.explain.Saliency),
            "gradient": sig(
                kbm.explain.Saliency, abs=False, target_input=False
            ),
        },
    )
    assert kbm.export.find_fused_ops(path) == {}
    fns = tf.saved_model.load(path).signatures
    assert sorted(fns.keys()) == sorted(
        [
            "serving_default",
            *(["serve"] if not kbm.backend.IS_LEGACY_KERAS else []),
            "explain",
            "explain_trapezoid",
            "explain_predicted",
            "saliency",
            "gradient",
        ]
    )
    predicted = model.predict(x, verbose=0).argmax(-1)
    target = tf.constant([-1, 0, 1, 2], tf.int32)
    features = tf.constant(x)

    out = fns["explain"](features=features, target=target)
    explained = out["target"].numpy()
    np.testing.assert_array_equal(explained, [predicted[0], 0, 1, 2])
    attr, delta = IG(model).attribute(
        x, target=explained, n_steps=32, return_convergence_delta=True
    )
    assert_close(out["attributions"], attr, 0, ATOL, "gausslegendre attr")
    assert_close(out["convergence_delta"], delta, 0, ATOL, "delta")

    out = fns["explain_trapezoid"](features=features, target=target)
    attr = IG(model).attribute(
        x,
        target=explained,
        baselines=baseline,
        n_steps=16,
        method="riemann_trapezoid",
    )
    assert_close(out["attributions"], attr, 0, ATOL, "trapezoid attr")

    out = fns["explain_predicted"](features=features)
    np.testing.assert_array_equal(out["target"], predicted)
    attr = IG(model).attribute(x, n_steps=8)
    assert_close(out["attributions"], attr, 0, ATOL, "predicted-class attr")

    out = fns["saliency"](features=features, target=target)
    saliency = kbm.explain.Saliency(model).attribute(x, target=explained)
    assert_close(out["attributions"], saliency, 0, ATOL, "saliency")
    out = fns["gradient"](features=features)
    gradient = kbm.explain.Saliency(model, abs=False).attribute(x)
    assert_close(out["attributions"], gradient, 0, ATOL, "gradient")

    with pytest.raises(
        tf.errors.InvalidArgumentError, match="target index out of range"
    ):
        fns["explain"](features=features, target=tf.constant([0, 1, 2, 3]))


def test_layer_signature_gives_token_attributions(tmp_path):
    model = token_classifier()
    path = kbm.export.export_saved_model(
        model,
        tmp_path / "sm",
        signatures={
            "explain": kbm.export.ExplainSignature(
                LIG, layer="embedding", n_steps=20
            )
        },
    )
    assert kbm.export.find_fused_ops(path) == {}
    fn = tf.saved_model.load(path).signatures["explain"]
    out = fn(token_ids=tf.constant(TOKENS), target=tf.constant([1, -1, 0]))
    explained = out["target"].numpy()
    attr, delta = LIG(model, "embedding").attribute(
        TOKENS,
        target=explained,
        baselines=0,
        n_steps=20,
        return_convergence_delta=True,
    )
    assert out["attributions"].shape == TOKENS.shape
    assert_close(out["attributions"], attr, 0, ATOL, "token attributions")
    assert_close(out["convergence_delta"], delta, 0, ATOL, "delta")


def test_predict_request_from_the_signature_is_well_formed(encoder_export):
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import predict_pb2

    model, path = encoder_export
    proto = saved_model_pb2.SavedModel()
    with open(f"{path}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    (meta_graph,) = proto.meta_graphs
    signature = meta_graph.signature_def["explain"]
    assert signature.method_name == "tensorflow/serving/predict"
    values = {
        "token_ids": TOKENS,
        "padding_mask": MASK,
        "target": np.array([-1, 1, 2]),
    }
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "encoder"
    request.model_spec.signature_name = "explain"
    for key, info in signature.inputs.items():
        request.inputs[key].CopyFrom(
            tf.make_tensor_proto(values[key], dtype=tf.as_dtype(info.dtype))
        )
    request.output_filter.extend(["attributions", "target"])
    wire = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert wire == request
    # What TF Serving's Predict checks: the same input keys, each tensor
    # of the declared dtype and a compatible shape, known output keys.
    assert set(wire.inputs) == set(signature.inputs)
    for key, info in signature.inputs.items():
        assert wire.inputs[key].dtype == info.dtype, key
        declared = tf.TensorShape(info.tensor_shape)
        sent = tf.TensorShape(wire.inputs[key].tensor_shape)
        assert declared.is_compatible_with(sent), (key, declared, sent)
    assert set(wire.output_filter) <= set(signature.outputs)
    # And what it then runs: the graph fed and fetched by tensor name.
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        feeds = {
            signature.inputs[k].name: tf.make_ndarray(v)
            for k, v in wire.inputs.items()
        }
        fetches = {k: signature.outputs[k].name for k in wire.output_filter}
        served = sess.run(fetches, feeds)
    attr, _ = encoder_oracle(model, served["target"], 16, "riemann_trapezoid")
    assert_close(served["attributions"], attr, 0, ATOL, "served attr")
    # The REST body of the same request, columnar ("inputs") format.
    body = json.loads(
        json.dumps(
            {
                "signature_name": "explain",
                "inputs": {k: v.tolist() for k, v in values.items()},
            }
        )
    )
    fn = tf.saved_model.load(path).signatures[body["signature_name"]]
    specs = fn.structured_input_signature[1]
    rest = fn(
        **{k: tf.constant(v, specs[k].dtype) for k, v in body["inputs"].items()}
    )
    assert_close(rest["attributions"], served["attributions"], 0, 1e-6)


@pytest.fixture(scope="module")
def dense_model():
    return dense_classifier()


@pytest.mark.parametrize(
    "signatures,match",
    [
        ([IG], "signatures must be a dict"),
        ({"explain": object()}, "must be a kbm.export.ExplainSignature"),
        ({"explain": IG}, "must be a kbm.export.ExplainSignature"),
        (
            {"serving_default": kbm.export.ExplainSignature(IG)},
            "'serving_default' clashes with one export_saved_model writes",
        ),
        ({"serve": kbm.export.ExplainSignature(IG)}, "'serve' clashes"),
        ({"variables": kbm.export.ExplainSignature(IG)}, "clashes"),
        ({"my explain": kbm.export.ExplainSignature(IG)}, "identifiers"),
        ({"_explain": kbm.export.ExplainSignature(IG)}, "identifiers"),
    ],
)
def test_bad_signatures_argument(dense_model, tmp_path, signatures, match):
    with pytest.raises(ValueError, match=match):
        kbm.export.export_saved_model(
            dense_model, tmp_path / "sm", signatures=signatures
        )
    assert not (tmp_path / "sm").exists()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(algorithm=kbm.explain.KernelShap), "algorithm must be one of"),
        (dict(algorithm=IG(dense_classifier)), "algorithm must be one of"),
        (dict(algorithm=LIG), "needs the layer to attribute to"),
        (dict(algorithm=IG, layer="logits"), "layer is for"),
        (dict(algorithm=IG, n_steps=0), "n_steps must be a positive"),
        (dict(algorithm=IG, method="simpson"), "method must be one of"),
        (
            dict(algorithm=IG, method="riemann_trapezoid", n_steps=1),
            "riemann_trapezoid needs n_steps >= 2",
        ),
        (dict(algorithm=IG, baseline="zeros"), "baseline must be a number"),
    ],
)
def test_bad_explain_signature(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kbm.export.ExplainSignature(**kwargs)


def multi_output_model():
    inputs = keras.Input((4,), name="x")
    return keras.Model(
        inputs,
        [
            keras.layers.Dense(2, name="a")(inputs),
            keras.layers.Dense(1)(inputs),
        ],
    )


@pytest.mark.parametrize(
    "make_model,kwargs,match",
    [
        (
            token_classifier,
            dict(algorithm=IG),
            "input 'token_ids', which is int32 .*LayerIntegratedGradients",
        ),
        (
            token_classifier,
            dict(algorithm=kbm.explain.Saliency),
            "has no gradient",
        ),
        (
            token_classifier,
            dict(algorithm=LIG, layer="missing"),
            "no layer named 'missing'",
        ),
        (
            dense_classifier,
            dict(algorithm=IG, baseline=np.zeros(5)),
            r"baseline must be a scalar or one example of shape \(12,\)",
        ),
        (
            dense_classifier,
            dict(algorithm=IG, input_name="pixels"),
            "no input named 'pixels'",
        ),
        (
            lambda: dense_classifier(name="target"),
            dict(algorithm=IG),
            "input named 'target', which clashes",
        ),
        (multi_output_model, dict(algorithm=IG), "needs a model with one out"),
    ],
)
def test_signature_the_model_cannot_have(tmp_path, make_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kbm.export.export_saved_model(
            make_model(),
            tmp_path / "sm",
            signatures={"explain": kbm.export.ExplainSignature(**kwargs)},
        )


def test_stock_export_refuses_explain_signature_with_fused_ops(
    dense_model, tmp_path, monkeypatch
):
    class KeepKernels:  # A broken switch: kernels stay on during export.
        def __init__(self, enabled):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(export_module.config, "fused_kernels", KeepKernels)
    with pytest.raises(
        RuntimeError, match=r"still contains keras_bigmodels ops \(Kbm>"
    ):
        kbm.export.export_saved_model(
            dense_model,
            tmp_path / "bad",
            signatures={"explain": kbm.export.ExplainSignature(IG)},
        )


def test_subclassed_model_without_inputs(tmp_path):
    class Scale(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Scale()
    x = np.ones((2, 3), "float32")
    expected = model(x).numpy()
    # Written as before named signatures: Keras's own default signature.
    path = kbm.export.export_saved_model(model, tmp_path / "plain")
    fn = tf.saved_model.load(path).signatures["serving_default"]
    (served,) = fn(tf.constant(x)).values()
    assert_close(served, expected, 1e-6, 1e-6)
    with pytest.raises(ValueError, match="need a model with symbolic inputs"):
        kbm.export.export_saved_model(
            model,
            tmp_path / "sm",
            signatures={"explain": kbm.export.ExplainSignature(IG)},
        )
