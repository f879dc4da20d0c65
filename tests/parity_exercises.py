"""One small exercise per public name of keras_bigmodels, for the Keras 3 /
tf-keras parity table in README.md.

Run as a script (`python -m tests.parity_exercises`, with or without
`TF_USE_LEGACY_KERAS=1`) it runs every exercise and prints one JSON line
`{name: "ok" | "error: ..."}`. `tests/parity_test.py` runs it under both
Keras lines and renders the table.
"""

import json
import os
import tempfile
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bigmodels as kbm  # noqa: E402
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras  # noqa: E402


class NotOnThisLine(Exception):
    """Raised by an exercise whose API is documented as unavailable on this
    Keras line, once it has checked that the API says so clearly; the
    table shows `n/a` and the reason."""


EXERCISES = {}
RNG = np.random.default_rng(0)


def exercise(*names):
    def register(fn):
        for name in names:
            EXERCISES[name] = fn
        return fn

    return register


def _x(*shape):
    return RNG.standard_normal(shape).astype("float32")


def _fit_layer(layer, x, y_shape=None):
    """Builds a model around `layer`, fits one step, round-trips the
    config."""
    i = keras.Input(x.shape[1:], dtype=x.dtype)
    out = layer(i)
    model = keras.Model(i, out)
    model.compile("adam", "mse")
    y = np.zeros((len(x),) + tuple(out.shape[1:]), "float32")
    model.fit(x, y, epochs=1, verbose=0)
    type(layer).from_config(layer.get_config())
    return model


# ------------------------------------------------------------ adapters ----


@exercise(
    "adapters.active_adapter",
    "adapters.adapter_names",
    "adapters.enable_dora",
    "adapters.enable_lora",
    "adapters.load_adapters",
    "adapters.load_model",
    "adapters.merge",
    "adapters.save_adapters",
    "adapters.save_model",
    "adapters.set_active",
    "adapters.trainable_fraction",
    "adapters.unmerge",
)
def _():
    def build():
        keras.utils.set_random_seed(0)
        i = keras.Input((5, 8))
        h = keras.layers.MultiHeadAttention(2, 4, name="mha")(i, i)
        out = keras.layers.Dense(2, name="head")(
            keras.layers.GlobalAveragePooling1D()(h)
        )
        return keras.Model(i, out)

    x = _x(3, 5, 8)
    model = build()
    # train_also=None: the head stays the base model's, so that the saved
    # adapters alone reproduce the outputs on a fresh base model.
    kbm.adapters.enable_lora(model, rank=2, train_also=None)
    kbm.adapters.enable_dora(
        model, rank=2, name="d", targets=["mha/"], train_also=None
    )
    assert kbm.adapters.adapter_names(model) == ["default", "d"]
    assert kbm.adapters.active_adapter(model) == "d"
    trainable, total = kbm.adapters.trainable_fraction(model)
    assert 0 < trainable < total
    model.compile("adam", "mse")
    model.fit(x, np.ones((3, 2)), epochs=1, verbose=0)
    kbm.adapters.set_active(model, "default")
    y = model(x).numpy()
    kbm.adapters.merge(model)
    np.testing.assert_allclose(model(x).numpy(), y, atol=1e-5)
    kbm.adapters.unmerge(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "a.safetensors")
        kbm.adapters.save_adapters(model, path)
        fresh = build()
        kbm.adapters.load_adapters(fresh, path)
        np.testing.assert_allclose(fresh(x).numpy(), y, atol=1e-5)
        path = os.path.join(tmp, "m.keras")
        kbm.adapters.save_model(model, path)
        loaded = kbm.adapters.load_model(path)
        np.testing.assert_allclose(loaded(x).numpy(), y, atol=1e-5)


@exercise("adapters.requantization_error")
def _():
    keras.utils.set_random_seed(0)
    i = keras.Input((16,))
    model = keras.Model(i, keras.layers.Dense(8, name="d")(i))
    kbm.quantization.quantize(model, "int8_weight_only")
    kbm.adapters.enable_lora(model, rank=2, targets=["d"])
    x = _x(4, 16)
    report = kbm.adapters.requantization_error(model, x)
    assert 0 <= report["max_weight_error"]
    assert "max_output_error" in report


# ----------------------------------------------------------------- ops ----


@exercise("ops.layer_norm")
def _():
    kbm.ops.layer_norm(_x(4, 8), tf.ones(8), tf.zeros(8))


@exercise("ops.rms_norm")
def _():
    kbm.ops.rms_norm(_x(4, 8), tf.ones(8))


@exercise("ops.bias_gelu")
def _():
    kbm.ops.bias_gelu(_x(4, 8), tf.zeros(8))


@exercise("ops.dropout")
def _():
    kbm.ops.dropout(_x(4, 8), 0.1, [1, 2])


@exercise("ops.flash_attention")
def _():
    q = _x(1, 5, 2, 4)
    kbm.ops.flash_attention(q, q, q, causal=True)


@exercise("ops.attention_dropout_mask")
def _():
    kbm.ops.attention_dropout_mask([1, 2], [1, 2, 5, 5], 0.1)


@exercise("ops.softmax_kl_divergence")
def _():
    kbm.ops.softmax_kl_divergence(_x(4, 10), _x(4, 10), 2.0)


@exercise(
    "ops.quantize_kernel",
    "ops.pack_kernel",
    "ops.unpack_kernel",
    "ops.dequantize_kernel",
    "ops.quantized_matmul",
    "ops.weight_only_matmul",
)
def _():
    w = _x(16, 8)
    q, s = kbm.ops.quantize_kernel(w)
    packed = kbm.ops.pack_kernel(q)
    np.testing.assert_array_equal(kbm.ops.unpack_kernel(packed, 16, 8), q)
    kbm.ops.dequantize_kernel(packed, s, 16)
    kbm.ops.quantized_matmul(_x(4, 16), packed, s, activation="gelu")
    q4, s4 = kbm.ops.quantize_kernel(w, bits=4, group_size=8)
    kbm.ops.weight_only_matmul(
        _x(2, 16), kbm.ops.pack_kernel(q4, bits=4), s4, group_size=8, bits=4
    )


@exercise("ops.kernels_available", "ops.KernelStatus")
def _():
    status = kbm.ops.kernels_available()
    assert isinstance(status, kbm.ops.KernelStatus)


# ------------------------------------------------------------- config ----


@exercise(
    "config.fused_kernels",
    "config.fused_kernels_enabled",
    "config.FusedKernelFallbackWarning",
)
def _():
    with kbm.config.fused_kernels(False):
        assert not kbm.config.fused_kernels_enabled()
    assert issubclass(kbm.config.FusedKernelFallbackWarning, Warning)


# ------------------------------------------------------------- layers ----


@exercise("layers.LayerNormalization")
def _():
    _fit_layer(kbm.layers.LayerNormalization(), _x(4, 8))


@exercise("layers.RMSNormalization")
def _():
    _fit_layer(kbm.layers.RMSNormalization(), _x(4, 8))


@exercise("layers.FusedDense")
def _():
    _fit_layer(kbm.layers.FusedDense(6, activation="gelu"), _x(4, 8))


@exercise("layers.MultiHeadAttention")
def _():
    layer = kbm.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    x = _x(2, 5, 8)
    layer(x, x, use_causal_mask=True)
    type(layer).from_config(layer.get_config())


@exercise("layers.GroupedQueryAttention")
def _():
    layer = kbm.layers.GroupedQueryAttention(
        head_dim=4, num_query_heads=4, num_key_value_heads=2
    )
    x = _x(2, 5, 8)
    layer(x, x)
    type(layer).from_config(layer.get_config())


@exercise("layers.TransformerEncoder")
def _():
    _fit_layer(kbm.layers.TransformerEncoder(16, num_heads=2), _x(2, 5, 8))


@exercise("layers.TransformerDecoder")
def _():
    layer = kbm.layers.TransformerDecoder(16, num_heads=2)
    x = _x(2, 5, 8)
    layer(x, x)
    type(layer).from_config(layer.get_config())


@exercise("layers.TokenAndPositionEmbedding")
def _():
    ids = np.array([[1, 2, 0]], "int32")
    _fit_layer(kbm.layers.TokenAndPositionEmbedding(10, 3, 4), ids)


@exercise("layers.PositionEmbedding")
def _():
    _fit_layer(kbm.layers.PositionEmbedding(5), _x(2, 5, 4))


@exercise("layers.RotaryEmbedding", "layers.apply_rotary_embedding")
def _():
    _fit_layer(kbm.layers.RotaryEmbedding(), _x(2, 5, 4))
    assert callable(kbm.layers.apply_rotary_embedding)


# --------------------------------------------------------- optimizers ----


def _train_with(optimizer):
    i = keras.Input((4,))
    model = keras.Model(i, keras.layers.Dense(2)(i))
    model.compile(optimizer, "mse")
    model.fit(_x(8, 4), _x(8, 2), epochs=1, verbose=0)


@exercise("optimizers.AdamW")
def _():
    _train_with(kbm.optimizers.AdamW(1e-3, weight_decay=0.01))


@exercise("optimizers.Lamb")
def _():
    _train_with(kbm.optimizers.Lamb(1e-3))


@exercise("optimizers.Lion")
def _():
    _train_with(kbm.optimizers.Lion(1e-4))


@exercise("optimizers.RAdam")
def _():
    _train_with(kbm.optimizers.RAdam(1e-3))


@exercise("optimizers.Lookahead")
def _():
    _train_with(kbm.optimizers.Lookahead(kbm.optimizers.AdamW(1e-3)))


@exercise(
    "optimizers.schedules.WarmupCosineDecay",
    "optimizers.schedules.WarmupLinearDecay",
    "optimizers.schedules.WarmupInverseSqrtDecay",
)
def _():
    s = kbm.optimizers.schedules
    for schedule in (
        s.WarmupCosineDecay(1e-3, warmup_steps=2, decay_steps=10),
        s.WarmupLinearDecay(1e-3, warmup_steps=2, decay_steps=10),
        s.WarmupInverseSqrtDecay(1e-3, warmup_steps=2),
    ):
        float(schedule(3))
        _train_with(kbm.optimizers.AdamW(schedule))


# -------------------------------------------------------- distillation ----


def _mlp(width):
    i = keras.Input((4,))
    h = keras.layers.Dense(width, activation="relu", name="hidden")(i)
    return keras.Model(i, keras.layers.Dense(3)(h))


def _distill(losses, **kwargs):
    d = kbm.distillation.Distiller(_mlp(8), _mlp(4), losses, **kwargs)
    d.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    d.fit(_x(8, 4), np.zeros(8, "int32"), epochs=1, verbose=0)
    return d


@exercise("distillation.Distiller", "distillation.losses.LogitsDistillation")
def _():
    d = _distill(kbm.distillation.losses.LogitsDistillation(2.0))
    with tempfile.TemporaryDirectory() as tmp:
        d.export_student(os.path.join(tmp, "student"))


@exercise("distillation.losses.FeatureDistillation")
def _():
    _distill(kbm.distillation.losses.FeatureDistillation("hidden", "hidden"))


@exercise("distillation.losses.HiddenStateDistillation")
def _():
    _distill(
        kbm.distillation.losses.HiddenStateDistillation({"hidden": "hidden"})
    )


def _bert_encoder(layers, name):
    return kbm.models.BertEncoder(
        vocabulary_size=20,
        num_layers=layers,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=6,
        name=name,
    )


@exercise(
    "distillation.student_from_teacher",
    "distillation.losses.AttentionDistillation",
)
def _():
    teacher = _bert_encoder(2, "t_enc")
    student = kbm.distillation.student_from_teacher(
        teacher, num_layers=1, name="s_enc"
    )
    x = {
        "token_ids": np.ones((4, 6), "int32"),
        "segment_ids": np.zeros((4, 6), "int32"),
        "padding_mask": np.ones((4, 6), "int32"),
    }
    d = kbm.distillation.Distiller(
        teacher,
        student,
        kbm.distillation.losses.AttentionDistillation(relation_heads=2),
        student_loss_weight=0.0,
    )
    d.compile(optimizer="adam")
    d.fit(x, epochs=1, verbose=0)


@exercise(
    "distillation.cache_teacher_outputs", "distillation.with_example_index"
)
def _():
    ds = tf.data.Dataset.from_tensor_slices((_x(8, 4), np.zeros(8, "int32")))
    cached = kbm.distillation.cache_teacher_outputs(_mlp(8), ds)
    list(cached.batch(4))
    list(kbm.distillation.with_example_index(ds).batch(4))


# ------------------------------------------------------------- explain ----


def _clf():
    i = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(2, 3, activation="relu", name="conv")(i)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(i, keras.layers.Dense(3)(h))


IMAGES = _x(2, 8, 8, 1)


@exercise("explain.Attribution")
def _():
    kbm.explain.Attribution(_clf()).predict(IMAGES)


@exercise("explain.Saliency")
def _():
    kbm.explain.Saliency(_clf()).attribute(IMAGES)


@exercise("explain.IntegratedGradients")
def _():
    kbm.explain.IntegratedGradients(_clf()).attribute(IMAGES, n_steps=4)


@exercise("explain.NoiseTunnel")
def _():
    kbm.explain.NoiseTunnel(
        kbm.explain.Saliency(_clf()), n_samples=2
    ).attribute(IMAGES)


@exercise("explain.GradientShap")
def _():
    kbm.explain.GradientShap(_clf(), IMAGES, n_samples=2).attribute(IMAGES)


@exercise("explain.KernelShap")
def _():
    mask = np.arange(4).repeat(16).reshape(8, 8)
    kbm.explain.KernelShap(_clf(), IMAGES, feature_mask=mask).attribute(IMAGES)


@exercise("explain.Lime")
def _():
    mask = np.arange(4).repeat(16).reshape(8, 8)
    kbm.explain.Lime(_clf(), feature_mask=mask, n_samples=20).attribute(IMAGES)


@exercise("explain.Occlusion")
def _():
    kbm.explain.Occlusion(_clf()).attribute(
        IMAGES, sliding_window_shapes=(4, 4, 1)
    )


@exercise("explain.GradCam", "explain.GradCamPlusPlus")
def _():
    kbm.explain.GradCam(_clf(), "conv").attribute(IMAGES)
    kbm.explain.GradCamPlusPlus(_clf(), "conv").attribute(IMAGES)


@exercise("explain.LayerIntegratedGradients")
def _():
    i = keras.Input((4,), dtype="int32")
    h = keras.layers.Embedding(10, 3, name="embed")(i)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(i, keras.layers.Dense(2)(h))
    kbm.explain.LayerIntegratedGradients(model, "embed").attribute(
        np.array([[1, 2, 3, 0]], "int32"), n_steps=4
    )


@exercise("explain.metrics")
def _():
    model = _clf()
    attr = kbm.explain.Saliency(model).attribute(IMAGES)
    m = kbm.explain.metrics
    m.deletion_curve(model, IMAGES, attr, steps=2)
    m.insertion_curve(model, IMAGES, attr, steps=2)
    m.completeness_delta(model, IMAGES, attr)
    m.sensitivity_max(kbm.explain.Saliency(model), IMAGES, n_perturb=2)
    m.model_randomization_check(kbm.explain.Saliency, model, IMAGES)


@exercise("explain.plot")
def _():
    import matplotlib

    matplotlib.use("Agg")
    p = kbm.explain.plot
    p.image_overlay(IMAGES[0], IMAGES[0])
    p.bar_chart(np.arange(3.0))
    p.token_heatmap(["a", "b"], [1.0, -1.0])
    p.token_html(["a"], [1.0])


# ----------------------------------------------------------- callbacks ----


def _fit_with(callback):
    model = _clf()
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(
        IMAGES, np.array([0, 1]), epochs=1, verbose=0, callbacks=[callback]
    )


@exercise("callbacks.AttributionMonitor")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        _fit_with(
            kbm.callbacks.AttributionMonitor(
                kbm.explain.Saliency, IMAGES, log_dir=tmp, save_dir=tmp
            )
        )


@exercise("callbacks.FaithfulnessMonitor")
def _():
    _fit_with(
        kbm.callbacks.FaithfulnessMonitor(kbm.explain.Saliency, IMAGES, steps=2)
    )


@exercise("callbacks.BackupAndRestore")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        _fit_with(kbm.callbacks.BackupAndRestore(tmp))


# -------------------------------------------------------------- export ----


@exercise("export.export_saved_model", "export.find_fused_ops")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        i = keras.Input((8,))
        model = keras.Model(i, kbm.layers.FusedDense(4, activation="gelu")(i))
        kbm.export.export_saved_model(model, tmp)
        assert kbm.export.find_fused_ops(tmp) == {}


# ------------------------------------------------------------ datasets ----


@exercise("datasets.load_text_classification")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.csv")
        with open(path, "w") as f:
            f.write(
                "text,label\n" + "\n".join(f"t{i},{i % 2}" for i in range(8))
            )
        kbm.datasets.load_text_classification(path)


@exercise("datasets.Digits", "datasets.MnistSubset", "datasets.RottenTomatoes")
def _():
    import tensorflow_datasets as tfds

    with tempfile.TemporaryDirectory() as tmp:
        ds = tfds.load("kbm_digits", split="test", data_dir=tmp)
        next(iter(ds))
    assert tfds.builder_cls("kbm_mnist_subset") is kbm.datasets.MnistSubset
    assert tfds.builder_cls("kbm_rotten_tomatoes") is (
        kbm.datasets.RottenTomatoes
    )


# -------------------------------------------------------------- models ----


def _tiny_bert():
    return kbm.models.BertEncoder(
        vocabulary_size=20,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
    )


@exercise("models.BertEncoder", "models.MeanPooling", "models.mean_pool")
def _():
    encoder = _tiny_bert()
    ids = np.array([[2, 5, 7, 3, 0, 0]], "int32")
    inputs = {
        "token_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "padding_mask": (ids != 0).astype("int32"),
    }
    seq = encoder(inputs)
    kbm.models.mean_pool(seq, inputs["padding_mask"])
    kbm.models.MeanPooling()(seq, padding_mask=inputs["padding_mask"])
    type(encoder).from_config(encoder.get_config())


@exercise(
    "models.minilm_l6_v2_path",
    "models.WordPieceTokenizer",
    "models.load_safetensors",
    "models.read_safetensors_header",
)
def _():
    path = kbm.models.minilm_l6_v2_path()
    tokenizer = kbm.models.WordPieceTokenizer.from_checkpoint(path)
    tokenizer.encode(["A short test."], sequence_length=8)
    weights = os.path.join(path, "model.safetensors")
    header = kbm.models.read_safetensors_header(weights)
    name = sorted(k for k in header if k != "__metadata__")[0]
    kbm.models.load_safetensors(weights, names=[name])


# ------------------------------------------------------- export (more) ----


@exercise("export.ExplainSignature")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        i = keras.Input((4,), name="features")
        model = keras.Model(i, keras.layers.Dense(2, name="logits")(i))
        kbm.export.export_saved_model(
            model,
            tmp,
            signatures={
                "explain": kbm.export.ExplainSignature(
                    kbm.explain.IntegratedGradients, n_steps=4
                )
            },
        )
        loaded = tf.saved_model.load(tmp)
        assert "explain" in loaded.signatures


# ---------------------------------------------------------- distribute ----


@exercise(
    "distribute.enable_multi_worker_keras_fit",
    "distribute.TESTED_KERAS_VERSIONS",
    "distribute.MultiWorkerCompatWarning",
    "distribute.tf_config",
    "distribute.local_workers",
)
def _():
    # The multi-worker runs themselves are in tests/distribute (2 worker
    # processes each); here: the API imports and behaves on this line.
    assert kbm.distribute.enable_multi_worker_keras_fit() in (True, False)
    assert isinstance(kbm.distribute.TESTED_KERAS_VERSIONS, (tuple, list))
    assert issubclass(kbm.distribute.MultiWorkerCompatWarning, Warning)
    workers = kbm.distribute.local_workers(2)
    json.loads(kbm.distribute.tf_config(workers, 1))


# --------------------------------------------------------------- utils ----


@exercise(
    "utils.Latency",
    "utils.measure_latency",
    "utils.measure_latencies",
    "utils.MachineFigure",
    "utils.matmul_gflops",
)
def _():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    x = _x(3, 4)
    one = kbm.utils.measure_latency(model, x, runs=5, warmup=1)
    both = kbm.utils.measure_latencies({"a": model, "b": model}, x, runs=5)
    assert isinstance(one, kbm.utils.Latency) and one.batch_size == 3
    assert one.min_ms <= one.median_ms <= one.max_ms
    assert list(both) == ["a", "b"]
    figure = kbm.utils.matmul_gflops(seconds=0.01, size=32)
    assert isinstance(figure, kbm.utils.MachineFigure) and figure.gflops > 0


# ---------------------------------------------------- magnitude pruning ----


@exercise(
    "pruning.PolynomialDecay",
    "pruning.ConstantSparsity",
    "pruning.PruningSchedule",
    "pruning.prune_low_magnitude",
    "pruning.UpdatePruningStep",
    "pruning.update_pruning_masks",
    "pruning.get_sparsity",
    "pruning.strip_pruning",
    "pruning.compute_mask",
    "pruning.PrunedDense",
    "pruning.PrunedFusedDense",
)
def _():
    inputs = keras.Input((8,))
    h = kbm.layers.FusedDense(8, activation="gelu", name="fd")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="d")(h))
    schedule = kbm.pruning.PolynomialDecay(0.0, 0.5, 0, 2, frequency=1)
    assert isinstance(schedule, kbm.pruning.PruningSchedule)
    kbm.pruning.prune_low_magnitude(model, schedule)
    assert isinstance(model.get_layer("d"), kbm.pruning.PrunedDense)
    assert isinstance(model.get_layer("fd"), kbm.pruning.PrunedFusedDense)
    model.compile("adam", "mse")
    model.fit(
        _x(6, 8),
        _x(6, 4),
        batch_size=2,
        verbose=0,
        callbacks=[kbm.pruning.UpdatePruningStep()],
    )
    assert kbm.pruning.get_sparsity(model) == {"fd": 0.5, "d": 0.5}
    kbm.pruning.update_pruning_masks(model, 3)
    kbm.pruning.strip_pruning(model)
    assert len(model.weights) == 4
    mask = kbm.pruning.compute_mask(np.arange(4.0), 0.5)
    assert mask.tolist() == [0, 0, 1, 1]
    kbm.pruning.ConstantSparsity(0.5, 0)


@exercise(
    "pruning.PrunedEinsumDense",
    "pruning.PrunedConv2D",
    "pruning.PrunedEmbedding",
)
def _():
    img = keras.Input((5, 5, 4))
    ids = keras.Input((3,), dtype="int32")
    c = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3, name="c")(img)
    )
    e = keras.layers.Embedding(10, 4, name="e")(ids)
    e = keras.layers.EinsumDense("abc,cd->abd", (3, 4), name="ein")(e)
    model = keras.Model([img, ids], [c, e])
    kbm.pruning.prune_low_magnitude(
        model, kbm.pruning.ConstantSparsity(0.5, 0), sparsity_m_by_n=(2, 4)
    )
    kbm.pruning.update_pruning_masks(model, 0)
    for name, cls in (
        ("c", kbm.pruning.PrunedConv2D),
        ("e", kbm.pruning.PrunedEmbedding),
        ("ein", kbm.pruning.PrunedEinsumDense),
    ):
        assert isinstance(model.get_layer(name), cls)
    assert set(kbm.pruning.get_sparsity(model).values()) == {0.5}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("ein"), kbm.pruning.PrunedEinsumDense)


@exercise(
    "pruning.SkippedBlock",
    "pruning.drop_layers",
    "pruning.head_importance",
    "pruning.neuron_importance",
    "pruning.prune",
    "pruning.prune_and_distil",
    "pruning.prune_heads",
    "pruning.prune_neurons",
    "pruning.select_lowest",
)
def _():
    inputs = keras.Input((5, 8))
    h = kbm.layers.TransformerEncoder(12, 2, name="a")(inputs)
    h = kbm.layers.TransformerEncoder(12, 2, name="b")(h)
    model = keras.Model(inputs, h)
    x = _x(2, 5, 8)
    heads = kbm.pruning.head_importance(model, x)
    units = kbm.pruning.neuron_importance(model, x)
    assert heads["a"].shape == (2,) and units["b"].shape == (12,)
    chosen = kbm.pruning.select_lowest(units, 0.5)
    small = kbm.pruning.prune_neurons(model, chosen)
    small = kbm.pruning.prune_heads(small, {"a": [0]})
    small = kbm.pruning.drop_layers(small, ["b"])
    assert isinstance(small.get_layer("b"), kbm.pruning.SkippedBlock)
    assert kbm.pruning.prune(model).count_params() == model.count_params()
    student, report = kbm.pruning.prune_and_distil(
        model, [x], target_heads_fraction=0.5, epochs=1
    )
    assert student.count_params() < model.count_params()


# ------------------------------------------------------- quantization ----


def _quantization_model():
    ids = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(20, 16)(ids)
    h = keras.layers.EinsumDense("abc,cd->abd", (None, 16), bias_axes="d")(h)
    h = keras.layers.Reshape((6, 16, 1))(h)
    h = keras.layers.Conv2D(2, 3)(h)
    h = keras.layers.Flatten()(h)
    h = kbm.layers.FusedDense(8, activation="gelu")(h)
    return keras.Model(ids, keras.layers.Dense(2)(h))


@exercise("quantization.accelerate")
def _():
    inputs = keras.Input((16,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    if IS_LEGACY_KERAS:  # tf-keras 2 has no `quantize` API.
        try:
            kbm.quantization.accelerate(model)
        except NotImplementedError as e:
            assert "needs Keras 3" in str(e), e
            raise NotOnThisLine(
                "Keras 3 only (a clear NotImplementedError)"
            ) from None
        raise AssertionError("accelerate ran on tf-keras")
    report = kbm.quantization.accelerate(model)  # Float: all skipped.
    assert not report["accelerated"] and len(report["skipped"]) == 2
    model.quantize("int8")
    x = _x(3, 16)
    y = model.predict(x, verbose=0)
    report = kbm.quantization.accelerate(model)
    assert len(report["accelerated"]) == 2, report
    np.testing.assert_allclose(model.predict(x, verbose=0), y, 1e-5, 1e-5)


@exercise(
    "quantization.quantize",
    "quantization.MODES",
    "quantization.QuantizedDense",
    "quantization.QuantizedEinsumDense",
    "quantization.QuantizedEmbedding",
    "quantization.QuantizedConv2D",
    "quantization.quantized_model_class",
)
def _():
    ids = RNG.integers(0, 20, (3, 6))
    for mode in kbm.quantization.MODES:
        model = _quantization_model()
        kbm.quantization.quantize(model, mode, group_size=8)
        kinds = {type(layer).__name__ for layer in model._flatten_layers()}
        assert {
            "QuantizedDense",
            "QuantizedEinsumDense",
            "QuantizedEmbedding",
            "QuantizedConv2D",
        } <= kinds
        y = model.predict(ids, verbose=0)
        with tempfile.TemporaryDirectory() as d:
            model.save(os.path.join(d, "m.keras"))
            loaded = keras.models.load_model(os.path.join(d, "m.keras"))
        np.testing.assert_allclose(loaded.predict(ids, verbose=0), y, 1e-6)
    cls = kbm.quantization.quantized_model_class(keras.Model)
    assert issubclass(cls, keras.Model)


@exercise(
    "quantization.quantize_aware",
    "quantization.convert",
    "quantization.QATDense",
    "quantization.QATFusedDense",
    "quantization.QATEinsumDense",
    "quantization.QATEmbedding",
    "quantization.QATConv2D",
)
def _():
    ids = RNG.integers(0, 20, (8, 6))
    model = _quantization_model()
    kbm.quantization.quantize_aware(model, "int8", group_size=8)
    kinds = {type(layer).__name__ for layer in model._flatten_layers()}
    assert {
        "QATDense",
        "QATFusedDense",
        "QATEinsumDense",
        "QATEmbedding",
        "QATConv2D",
    } <= kinds
    model.compile("adam", "mse")
    model.fit(ids, np.zeros((8, 2), "float32"), epochs=1, verbose=0)
    fake = model.predict(ids, verbose=0)
    kbm.quantization.convert(model)
    np.testing.assert_allclose(model.predict(ids, verbose=0), fake, 1e-4, 1e-4)


def public_names():
    """Every public name the parity table must cover."""
    names = []
    for module_name in kbm.__all__:
        if module_name in ("backend", "__version__"):
            continue
        module = getattr(kbm, module_name)
        exported = getattr(module, "__all__", None)
        if exported is None:  # config: its documented functions and class.
            exported = [
                "fused_kernels",
                "fused_kernels_enabled",
                "FusedKernelFallbackWarning",
            ]
        for name in exported:
            value = getattr(module, name)
            nested = getattr(value, "__all__", None)
            if nested is not None and name in ("losses", "schedules"):
                names += [f"{module_name}.{name}.{n}" for n in nested]
            elif name == "losses":
                names += [
                    f"{module_name}.losses.{n}"
                    for n in (
                        "LogitsDistillation",
                        "FeatureDistillation",
                        "HiddenStateDistillation",
                        "AttentionDistillation",
                    )
                ]
            elif name == "schedules":
                names += [
                    f"{module_name}.schedules.{n}"
                    for n in (
                        "WarmupCosineDecay",
                        "WarmupLinearDecay",
                        "WarmupInverseSqrtDecay",
                    )
                ]
            else:
                names.append(f"{module_name}.{name}")
    return names


def run_all():
    results = {}
    for name in public_names():
        fn = EXERCISES.get(name)
        if fn is None:
            results[name] = "error: no exercise"
            continue
        try:
            keras.backend.clear_session()
            fn()
            results[name] = "ok"
        except NotOnThisLine as e:
            results[name] = f"n/a: {e}"
        except Exception as e:  # Reported in the table, not raised.
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            results[name] = f"error: {last[:200]}"
    return results


if __name__ == "__main__":
    print(json.dumps(run_all()))
