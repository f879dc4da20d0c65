"""kbm.adapters: LoRA and DoRA on kbm and Keras layers."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels import adapters
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

HIDDEN, HEADS, INTER, VOCAB, LAYERS, SEQ = 16, 2, 32, 40, 2, 7


def bert(seed=0):
    keras.utils.set_random_seed(seed)
    encoder = kbm.models.BertEncoder(
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=INTER,
        max_sequence_length=16,
        dropout=0.0,
    )
    return encoder


def bert_inputs(batch=3, seed=1):
    rng = np.random.RandomState(seed)
    mask = np.ones((batch, SEQ), "int32")
    mask[0, -2:] = 0
    return {
        "token_ids": rng.randint(1, VOCAB, (batch, SEQ)).astype("int32"),
        "segment_ids": np.zeros((batch, SEQ), "int32"),
        "padding_mask": mask,
    }


def bert_classifier(seed=0):
    encoder = bert(seed)
    inputs = {
        k: keras.Input((None,), dtype="int32", name=k)
        for k in ("token_ids", "segment_ids", "padding_mask")
    }
    h = encoder(inputs)
    pooled = kbm.models.MeanPooling()(h, mask=inputs["padding_mask"])
    logits = keras.layers.Dense(2, name="head")(pooled)
    return keras.Model(inputs, logits)


def mha_model(seed=0, cls=None):
    keras.utils.set_random_seed(seed)
    cls = cls or keras.layers.MultiHeadAttention
    inp = keras.Input((SEQ, HIDDEN))
    x = cls(num_heads=HEADS, key_dim=8, name="mha")(inp, inp)
    x = keras.layers.GlobalAveragePooling1D()(x)
    out = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inp, out)


def mha_inputs(batch=4, seed=2):
    return (
        np.random.RandomState(seed).randn(batch, SEQ, HIDDEN).astype("float32")
    )


def n_params(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def perturb(model, seed=3, scale=0.5):
    """Random adapter values, so that the adapter changes the outputs."""
    rng = np.random.RandomState(seed)
    for v in model.trainable_weights:
        if "lora" in v.name or "magnitude" in v.name:
            v.assign(v.numpy() + scale * rng.randn(*v.shape).astype("float32"))


def base_weights(model):
    return [
        v.numpy().copy()
        for v in model.weights
        if "lora" not in v.name and "magnitude" not in v.name
    ]


# -- parameter counts ------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 4])
def test_lora_adds_exact_parameter_count_on_bert(rank):
    model = bert()
    model(bert_inputs())
    before = n_params(model.weights)
    paths = adapters.enable_lora(model, rank=rank)
    assert sorted(paths) == sorted(
        f"transformer_layer_{i}/self_attention/{p}"
        for i in range(LAYERS)
        for p in ("query", "value")
    )
    expected = LAYERS * 2 * rank * (HIDDEN + HIDDEN)
    assert n_params(model.weights) - before == expected
    assert n_params(model.trainable_weights) == expected


def test_dora_and_embedding_parameter_counts():
    model = bert()
    model(bert_inputs())
    before = n_params(model.weights)
    adapters.enable_dora(
        model, rank=2, targets=["token_embedding", "attention_output"]
    )
    # Embedding: r (V + D) + V (a magnitude per row); attention output
    # [heads, head_dim, dim] viewed as [16, 16]: r (16 + 16) + 16.
    expected = (2 * (VOCAB + HIDDEN) + VOCAB) + LAYERS * (
        2 * (HIDDEN + HIDDEN) + HIDDEN
    )
    assert n_params(model.weights) - before == expected


def test_keras_mha_parameter_count_and_default_targets():
    model = mha_model()
    before = n_params(model.weights)
    paths = adapters.enable_lora(model, rank=3)
    assert paths == ["mha/query", "mha/value"]
    lora = n_params(model.weights) - before
    assert lora == 2 * 3 * (HIDDEN + HEADS * 8)
    # The head (after the adapted attention) stays trainable by default.
    head = model.get_layer("head")
    assert n_params(model.trainable_weights) == lora + n_params(head.weights)


# -- outputs at initialisation, training -----------------------------------


@pytest.mark.parametrize("enable", [adapters.enable_lora, adapters.enable_dora])
def test_outputs_unchanged_at_init(enable):
    model = bert()
    x = bert_inputs()
    y0 = model(x).numpy()
    enable(model, rank=4, targets=["query", "value", "intermediate", "token"])
    np.testing.assert_allclose(model(x).numpy(), y0, atol=1e-6)


def test_dora_magnitude_is_column_norms():
    model = mha_model()
    query = model.get_layer("mha")._query_dense
    kernel = np.array(
        query.kernel.numpy() if IS_LEGACY_KERAS else query._kernel
    )
    adapters.enable_dora(model, rank=2)
    m = [v for v in query.weights if "magnitude" in v.name][0].numpy()
    # Kernel [dim, heads, head_dim] as [dim, heads * head_dim]: per output.
    expected = np.linalg.norm(kernel.reshape(HIDDEN, -1), axis=0)
    np.testing.assert_allclose(m, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.Adam(1e-2),
        lambda: kbm.optimizers.AdamW(1e-2, weight_decay=0.1),
    ],
    ids=["keras_adam", "kbm_adamw"],
)
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_only_adapters_train(optimizer, kind):
    model = bert_classifier()
    x = bert_inputs(batch=4)
    y = np.array([0, 1, 0, 1])
    enable = adapters.enable_lora if kind == "lora" else adapters.enable_dora
    enable(model, rank=2, train_also=None)
    frozen = base_weights(model)
    model.compile(
        optimizer(),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    a_before = [
        v.numpy().copy() for v in model.trainable_weights if "lora_b" in v.name
    ]
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    for before, after in zip(frozen, base_weights(model)):
        np.testing.assert_array_equal(before, after)
    a_after = [v.numpy() for v in model.trainable_weights if "lora_b" in v.name]
    assert a_before and all(
        not np.array_equal(b, a) for b, a in zip(a_before, a_after)
    )


def test_train_also_head_default_and_none():
    model = bert_classifier()
    adapters.enable_lora(model, rank=2)
    names = [v.name for v in model.trainable_weights]
    assert sum("lora" in n for n in names) == LAYERS * 2 * 2
    assert len(names) == LAYERS * 2 * 2 + 2  # + head kernel and bias
    model = bert_classifier()
    adapters.enable_lora(model, rank=2, train_also=None)
    assert all("lora" in v.name for v in model.trainable_weights)
    model = bert_classifier()
    adapters.enable_lora(model, rank=2, train_also=["embeddings_layer_norm"])
    assert len(model.trainable_weights) == LAYERS * 2 * 2 + 2


# -- merge -----------------------------------------------------------------


def _targets_cases():
    return {
        "qv": None,
        "einsum_out": ["attention_output"],
        "fused_gelu": ["feedforward_intermediate"],
        "embedding": ["token_embedding"],
    }


@pytest.mark.parametrize("kind", ["lora", "dora"])
@pytest.mark.parametrize("case", list(_targets_cases()))
def test_merge_equals_unmerged_and_unmerge_restores(kind, case):
    model = bert()
    x = bert_inputs()
    enable = adapters.enable_lora if kind == "lora" else adapters.enable_dora
    enable(model, rank=3, alpha=6.0, targets=_targets_cases()[case])
    perturb(model)
    base = base_weights(model)
    y = model(x).numpy()
    assert np.abs(y - bert()(x).numpy()).max() > 1e-3  # adapter matters
    adapters.merge(model)
    merged = model(x).numpy()
    np.testing.assert_allclose(merged, y, atol=1e-5, rtol=0)
    predicted = model.predict(x, verbose=0)
    np.testing.assert_allclose(predicted, y, atol=1e-5, rtol=0)
    adapters.unmerge(model)
    for before, after in zip(base, base_weights(model)):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_allclose(model(x).numpy(), y, atol=1e-6, rtol=0)


def test_merge_on_keras_mha_output_projection_and_kbm_gqa():
    for cls in (
        keras.layers.MultiHeadAttention,
        kbm.layers.MultiHeadAttention,
    ):
        model = mha_model(cls=cls)
        x = mha_inputs()
        adapters.enable_dora(model, rank=2, targets=["mha/"])
        perturb(model)
        y = model(x).numpy()
        adapters.merge(model)
        np.testing.assert_allclose(model(x).numpy(), y, atol=1e-5, rtol=0)
    keras.utils.set_random_seed(0)
    inp = keras.Input((SEQ, HIDDEN))
    gqa = kbm.layers.GroupedQueryAttention(
        head_dim=4, num_query_heads=4, num_key_value_heads=2, name="gqa"
    )
    model = keras.Model(inp, gqa(inp, inp))
    x = mha_inputs()
    paths = adapters.enable_lora(model, rank=2, targets=["gqa/"])
    assert set(paths) == {
        "gqa/query",
        "gqa/key",
        "gqa/value",
        "gqa/attention_output",
    }
    perturb(model)
    y = model(x).numpy()
    adapters.merge(model)
    np.testing.assert_allclose(model(x).numpy(), y, atol=1e-5, rtol=0)


def _op_types(model, x):
    fn = tf.function(lambda inputs: model(inputs, training=False))
    graph = fn.get_concrete_function(x).graph
    return sorted(op.type for op in graph.get_operations())


def test_merged_model_has_zero_extra_ops():
    x = tf.constant(mha_inputs())
    plain = mha_model()
    model = mha_model()
    adapters.enable_dora(model, rank=2, targets=["mha/", "head"])
    assert _op_types(model, x) != _op_types(plain, x)
    adapters.merge(model)
    assert _op_types(model, x) == _op_types(plain, x)
    for layer in (model.get_layer("head"), model.get_layer("mha")._value_dense):
        assert "call" not in layer.__dict__


# -- named adapters ----------------------------------------------------------


def test_named_adapters_switch():
    model = mha_model()
    x = mha_inputs()
    y_base = model(x).numpy()
    adapters.enable_lora(model, rank=2, name="a")
    perturb(model, seed=1)
    y_a = model(x).numpy()
    adapters.enable_dora(model, rank=4, name="b", targets=["head"])
    assert adapters.active_adapter(model) == "b"
    perturb(model, seed=2)
    y_b = model(x).numpy()
    assert adapters.adapter_names(model) == ["a", "b"]
    assert np.abs(y_a - y_b).max() > 1e-3
    trainable = {v.name for v in model.trainable_weights}
    assert any("b_" in n for n in trainable)
    assert not any(n.startswith("a_") for n in trainable)
    adapters.set_active(model, "a")
    np.testing.assert_allclose(model(x).numpy(), y_a, atol=1e-6)
    adapters.set_active(model, None)
    np.testing.assert_allclose(model(x).numpy(), y_base, atol=1e-6)
    adapters.set_active(model, "b")
    np.testing.assert_allclose(model(x).numpy(), y_b, atol=1e-6)
    adapters.merge(model, name="a")
    np.testing.assert_allclose(model(x).numpy(), y_a, atol=1e-5)
    adapters.unmerge(model)
    np.testing.assert_allclose(model(x).numpy(), y_a, atol=1e-6)


def test_dropout_only_while_training():
    model = mha_model()
    x = mha_inputs()
    adapters.enable_lora(model, rank=2, dropout=0.5)
    perturb(model)
    y = model(x).numpy()
    y_train = model(x, training=True).numpy()
    assert np.abs(y_train - y).max() > 1e-4
    adapters.merge(model)
    np.testing.assert_allclose(model(x).numpy(), y, atol=1e-5)


# -- saving ------------------------------------------------------------------


def test_keras_file_saves_merged_weights(tmp_path):
    model = bert_classifier()
    x = bert_inputs()
    adapters.enable_lora(model, rank=2)
    perturb(model)
    y = model(x).numpy()
    path = str(tmp_path / "adapted.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), y, atol=1e-5)
    # A merged model saves the same weights, and as plain layers.
    adapters.merge(model)
    model.save(str(tmp_path / "merged.keras"))
    loaded = keras.models.load_model(str(tmp_path / "merged.keras"))
    np.testing.assert_allclose(loaded(x).numpy(), y, atol=1e-5)


def test_keras_file_of_base_loads_into_adapted_model(tmp_path):
    base = bert_classifier(seed=5)
    path = str(tmp_path / "base.weights.h5")
    base.save_weights(path)
    model = bert_classifier(seed=6)
    adapters.enable_lora(model, rank=2)
    model.load_weights(path)
    x = bert_inputs()
    np.testing.assert_allclose(model(x).numpy(), base(x).numpy(), atol=1e-6)


def test_merged_model_exports_as_saved_model(tmp_path):
    model = mha_model()
    x = mha_inputs()
    adapters.enable_lora(model, rank=2, targets=["mha/", "head"])
    perturb(model)
    y = model(x).numpy()
    adapters.merge(model)
    path = kbm.export.export_saved_model(model, str(tmp_path / "served"))
    served = tf.saved_model.load(path).signatures["serving_default"]
    out = list(served(tf.constant(x)).values())[0].numpy()
    np.testing.assert_allclose(out, y, atol=1e-5, rtol=0)


def test_mixed_precision_policy():
    keras.utils.set_random_seed(0)
    inp = keras.Input((SEQ, HIDDEN))
    h = kbm.layers.FusedDense(
        INTER, activation="gelu", name="up", dtype="mixed_float16"
    )(inp)
    out = keras.layers.Dense(4, name="down", dtype="mixed_float16")(h)
    model = keras.Model(inp, out)
    x = mha_inputs()
    y0 = model(x).numpy()
    adapters.enable_dora(model, rank=2, targets=["up", "down"])
    np.testing.assert_allclose(model(x).numpy(), y0, atol=2e-3)
    perturb(model, scale=0.05)
    y = model(x)
    assert y.dtype == tf.float16
    for v in model.trainable_weights:
        assert v.dtype == "float32"
    adapters.merge(model)
    np.testing.assert_allclose(
        model(x).numpy().astype("float32"),
        y.numpy().astype("float32"),
        atol=5e-3,
    )


def test_adapters_train_inside_a_frozen_encoder():
    model = bert_classifier()
    encoder = [la for la in model.layers if "bert" in la.name][0]
    encoder.trainable = False
    adapters.enable_lora(model, rank=2)
    names = [v.name for v in model.trainable_weights]
    assert sum("lora" in n for n in names) == LAYERS * 2 * 2
    assert len(names) == LAYERS * 2 * 2 + 2
