"""kbm.models.BertEncoder: real MiniLM weights against NumPy, contract."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.testing import assert_close
from tests.models._checkpoints import (
    from_bf16_bits,
    hf_config,
    hf_tensors,
    minilm_path,
    to_bf16_bits,
    write_checkpoint,
)

SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome, funny and surprisingly touching!",
    "Hi.",
    "Rain, rain, go away; come again another day, little Johnny wants "
    "to play in the garden with his two dogs and a very old cat.",
    "Das Café liegt am Straßenrand.",
]

_erf = np.vectorize(math.erf, otypes=[np.float64])


def numpy_bert(tensors, config, token_ids, padding_mask):
    """BERT's forward pass in float64 NumPy, straight from the HF names."""
    t = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    head_dim = hidden // heads
    eps = config["layer_norm_eps"]
    batch, length = token_ids.shape

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * t[prefix + ".weight"] + t[
            prefix + ".bias"
        ]

    def linear(x, prefix):
        return x @ t[prefix + ".weight"].T + t[prefix + ".bias"]

    def split(x):  # [B, L, H] -> [B, heads, L, head_dim]
        return x.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)

    x = (
        t["embeddings.word_embeddings.weight"][token_ids]
        + t["embeddings.position_embeddings.weight"][:length][None]
        + t["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    keys_visible = padding_mask.astype(bool)[:, None, None, :]
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = split(linear(x, p + "attention.self.query"))
        k = split(linear(x, p + "attention.self.key"))
        v = split(linear(x, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim)
        scores = np.where(keys_visible, scores, -np.inf)
        scores -= scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        attention = linear(context, p + "attention.output.dense")
        x = layer_norm(x + attention, p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = layer_norm(
            x + linear(h, p + "output.dense"), p + "output.LayerNorm"
        )
    return x


def numpy_mean_pool(sequence, padding_mask):
    mask = padding_mask.astype(np.float64)[..., None]
    return (sequence * mask).sum(1) / mask.sum(1)


@pytest.fixture(scope="module")
def minilm():
    path = minilm_path()
    encoder = kbm.models.BertEncoder.from_checkpoint(path)
    tokenizer = kbm.models.WordPieceTokenizer.from_checkpoint(path)
    return path, encoder, tokenizer


def test_minilm_matches_a_numpy_bert(minilm):
    path, encoder, tokenizer = minilm
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    tensors = kbm.models.load_safetensors(
        os.path.join(path, "model.safetensors")
    )
    inputs = tokenizer.encode(SENTENCES)
    lengths = inputs["padding_mask"].sum(1)
    assert len(set(lengths.tolist())) == len(SENTENCES)  # all padded but one
    expected_sequence = numpy_bert(
        tensors, config, inputs["token_ids"], inputs["padding_mask"]
    )
    expected = numpy_mean_pool(expected_sequence, inputs["padding_mask"])

    sequence = encoder(inputs)
    pooled = kbm.models.mean_pool(sequence, inputs["padding_mask"])
    diff = np.abs(np.asarray(pooled, np.float64) - expected).max()
    assert diff < 1e-5, f"max |pooled - numpy| = {diff:.3g}"
    valid = inputs["padding_mask"].astype(bool)
    assert_close(
        np.asarray(sequence)[valid], expected_sequence[valid], 1e-4, 1e-4
    )
    # Graph mode, and the reference (unfused) path, agree too.
    graph = tf.function(encoder)(inputs)
    assert_close(
        np.asarray(graph)[valid],
        np.asarray(sequence)[valid],
        1e-5,
        1e-5,
        what="tf.function",
    )
    with kbm.config.fused_kernels(False):
        unfused = kbm.models.mean_pool(encoder(inputs), inputs["padding_mask"])
    assert_close(unfused, expected, 0, 1e-5, what="kernels off")


def test_minilm_sentence_embeddings_rank_paraphrases_first(minilm, keras):
    _, encoder, tokenizer = minilm
    texts = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar.",
        "The stock market fell sharply today.",
    ]
    inputs = tokenizer.encode(texts)
    pooled = kbm.models.MeanPooling()(
        encoder.output, padding_mask=encoder.input["padding_mask"]
    )
    sentence_model = keras.Model(encoder.input, pooled)
    e = tf.math.l2_normalize(sentence_model(inputs), axis=-1).numpy()
    similarity = e @ e.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]


def small_encoder(**kwargs):
    arguments = dict(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=12,
        dropout=0.0,
    )
    arguments.update(kwargs)
    return kbm.models.BertEncoder(**arguments)


def small_inputs(batch=4, length=9, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, size=batch)
    lengths[0] = length
    mask = (np.arange(length)[None] < lengths[:, None]).astype("int32")
    return {
        "token_ids": (rng.integers(1, 50, (batch, length)) * mask).astype(
            "int32"
        ),
        "segment_ids": (rng.integers(0, 2, (batch, length)) * mask).astype(
            "int32"
        ),
        "padding_mask": mask,
    }


def randomize(encoder, seed=0):
    """Random values for every weight (LayerNorm gammas and biases too)."""
    rng = np.random.default_rng(seed)
    encoder.set_weights(
        [
            rng.normal(1.0 if "gamma" in w.name else 0.0, 0.2, w.shape)
            for w in encoder.weights
        ]
    )


def test_small_encoder_matches_numpy_with_segments(tmp_path):
    encoder = small_encoder()
    randomize(encoder)
    inputs = small_inputs()
    tensors = hf_tensors(encoder)
    config = hf_config(encoder)
    # The reference uses segment 0 only; check segments separately.
    zero_segments = {
        **inputs,
        "segment_ids": np.zeros_like(inputs["token_ids"]),
    }
    expected = numpy_bert(
        tensors, config, inputs["token_ids"], inputs["padding_mask"]
    )
    valid = inputs["padding_mask"].astype(bool)
    assert_close(
        np.asarray(encoder(zero_segments))[valid], expected[valid], 1e-5, 1e-5
    )
    assert not np.allclose(
        np.asarray(encoder(inputs))[valid],
        np.asarray(encoder(zero_segments))[valid],
    )


@pytest.mark.parametrize(
    "dtype,prefix,atol",
    [("F32", "", 0.0), ("F16", "bert.", 1e-3), ("BF16", "", 1e-2)],
)
def test_checkpoint_round_trip(tmp_path, dtype, prefix, atol):
    source = small_encoder()
    randomize(source, seed=1)
    tensors = hf_tensors(source, prefix=prefix)
    # A pre-training checkpoint's heads are skipped.
    tensors[prefix + "cls.predictions.bias"] = np.zeros(50, np.float32)
    path = write_checkpoint(tmp_path, tensors, hf_config(source), dtype)
    loaded = kbm.models.BertEncoder.from_checkpoint(path, dropout=0.0)
    assert loaded.get_config()["dropout"] == 0.0
    assert loaded.get_config()["attention_dropout"] == 0.1
    for w_source, w_loaded in zip(source.weights, loaded.weights):
        value = w_source.numpy()
        if dtype == "F16":
            value = value.astype(np.float16)
        elif dtype == "BF16":
            value = from_bf16_bits(to_bf16_bits(value))
        np.testing.assert_array_equal(w_loaded.numpy(), value)
    inputs = small_inputs()
    valid = inputs["padding_mask"].astype(bool)
    assert_close(
        np.asarray(loaded(inputs))[valid],
        np.asarray(source(inputs))[valid],
        0,
        max(atol * 50, 1e-5),
    )


def test_config_round_trip(keras):
    encoder = small_encoder(
        attention_dropout=0.05, activation="gelu_tanh", name="tiny_bert"
    )
    config = encoder.get_config()
    clone = kbm.models.BertEncoder.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(encoder)
    )
    assert type(restored) is kbm.models.BertEncoder
    assert restored.get_config() == config
    assert len(restored.weights) == len(encoder.weights)


def test_save_and_load_keras_file(keras, tmp_path):
    encoder = small_encoder()
    randomize(encoder, seed=2)
    inputs = small_inputs()
    expected = np.asarray(encoder(inputs))
    path = str(tmp_path / "bert.keras")
    encoder.save(path)
    restored = keras.models.load_model(path)
    assert type(restored) is kbm.models.BertEncoder
    with kbm.config.fused_kernels(False):
        assert_close(restored(inputs), expected, 1e-5, 1e-5)


def test_fit_step_updates_every_weight(keras):
    keras.utils.set_random_seed(0)
    # Attention dropout runs inside the attention kernel.
    encoder = small_encoder(dropout=0.1, attention_dropout=0.1)
    inputs = small_inputs(batch=16, seed=3)
    graph = (
        tf.function(lambda x: encoder(x, training=True))
        .get_concrete_function(inputs)
        .graph.as_graph_def()
    )
    nodes = [
        *graph.node,
        *(n for f in graph.library.function for n in f.node_def),
    ]
    rates = [
        n.attr["dropout_rate"].f for n in nodes if n.op == "Kbm>FlashAttention"
    ]
    assert rates and all(r == np.float32(0.1) for r in rates)
    with tf.GradientTape() as tape:
        out = encoder(inputs, training=True)
        loss = tf.reduce_mean(
            kbm.models.mean_pool(out, inputs["padding_mask"]) ** 2
        )
    grads = tape.gradient(loss, encoder.trainable_weights)
    assert all(g is not None for g in grads)
    pooled = kbm.models.MeanPooling()(
        encoder.output, padding_mask=encoder.input["padding_mask"]
    )
    model = keras.Model(encoder.input, keras.layers.Dense(1)(pooled))
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    before = [w.numpy().copy() for w in encoder.weights]
    y = np.arange(16, dtype="float32")[:, None] / 16
    history = model.fit(inputs, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    changed = [
        not np.allclose(b, w.numpy()) for b, w in zip(before, encoder.weights)
    ]
    assert all(changed)


def test_padding_does_not_change_valid_outputs():
    encoder = small_encoder()
    randomize(encoder, seed=4)
    inputs = small_inputs(batch=2, length=6)
    padded = {k: np.pad(v, [(0, 0), (0, 5)]) for k, v in inputs.items()}
    padded["token_ids"][:, 6:] = 7  # junk under the mask
    a = kbm.models.mean_pool(encoder(inputs), inputs["padding_mask"])
    b = kbm.models.mean_pool(encoder(padded), padded["padding_mask"])
    assert_close(b, a, 1e-5, 1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_layers=0), "num_layers=0"),
        (dict(hidden_dim=15), "hidden_dim=15"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(attention_dropout=-0.1), "attention_dropout=-0.1"),
        (dict(layer_norm_epsilon=0), "layer_norm_epsilon=0"),
        (dict(activation="swiglu"), "activation='swiglu'"),
        (dict(vocabulary_size=2.5), "vocabulary_size=2.5"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_encoder(**kwargs)


@pytest.fixture(scope="module")
def tiny_checkpoint():
    encoder = small_encoder(num_layers=1)
    return encoder, hf_tensors(encoder), hf_config(encoder)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
        kbm.models.BertEncoder.from_checkpoint(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        kbm.models.BertEncoder.from_checkpoint(tmp_path)


def test_missing_tensor(tmp_path, tiny_checkpoint):
    _, tensors, config = tiny_checkpoint
    tensors = dict(tensors)
    del tensors["encoder.layer.0.attention.self.key.bias"]
    path = write_checkpoint(tmp_path, tensors, config)
    with pytest.raises(
        ValueError,
        match=r"missing tensors \(1\): "
        r"'encoder\.layer\.0\.attention\.self\.key\.bias'",
    ):
        kbm.models.BertEncoder.from_checkpoint(path)


def test_fewer_layers_than_the_config_says(tmp_path, tiny_checkpoint):
    _, tensors, config = tiny_checkpoint
    path = write_checkpoint(
        tmp_path, tensors, {**config, "num_hidden_layers": 2}
    )
    with pytest.raises(
        ValueError,
        match=r"missing tensors \(16\): "
        r"'encoder\.layer\.1\.",
    ):
        kbm.models.BertEncoder.from_checkpoint(path)


def test_unexpected_tensor(tmp_path, tiny_checkpoint):
    _, tensors, config = tiny_checkpoint
    tensors = {**tensors, "encoder.layer.0.attention.self.rotary": np.ones(3)}
    path = write_checkpoint(tmp_path, tensors, config)
    with pytest.raises(
        ValueError,
        match=r"unexpected tensors \(1\): "
        r"'encoder\.layer\.0\.attention\.self\.rotary'",
    ):
        kbm.models.BertEncoder.from_checkpoint(path)


def test_wrong_shape(tmp_path, tiny_checkpoint):
    _, tensors, config = tiny_checkpoint
    tensors = dict(tensors)
    tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros(
        (16, 32), np.float32
    )
    path = write_checkpoint(tmp_path, tensors, config)
    with pytest.raises(
        ValueError,
        match=r"'encoder\.layer\.0\.intermediate\.dense\.weight' has shape "
        r"\(16, 32\), the model needs \(32, 16\)",
    ):
        kbm.models.BertEncoder.from_checkpoint(path)
    # A vocabulary that disagrees with config.json.
    path = write_checkpoint(
        tmp_path / "vocab", tiny_checkpoint[1], {**config, "vocab_size": 60}
    )
    with pytest.raises(
        ValueError,
        match=r"'embeddings\.word_embeddings\.weight' has shape \(50, 16\), "
        r"the model needs \(60, 16\)",
    ):
        kbm.models.BertEncoder.from_checkpoint(path)


@pytest.mark.parametrize(
    "override,match",
    [
        (dict(model_type="roberta"), "model_type='roberta'"),
        (
            dict(position_embedding_type="relative_key"),
            "position_embedding_type='relative_key'",
        ),
        (dict(hidden_act="silu"), "hidden_act='silu'"),
    ],
)
def test_unsupported_configs(tmp_path, tiny_checkpoint, override, match):
    _, tensors, config = tiny_checkpoint
    path = write_checkpoint(tmp_path, tensors, {**config, **override})
    with pytest.raises(ValueError, match=match):
        kbm.models.BertEncoder.from_checkpoint(path)


def test_config_without_architecture(tmp_path, tiny_checkpoint):
    _, tensors, config = tiny_checkpoint
    config = {k: v for k, v in config.items() if k != "hidden_size"}
    path = write_checkpoint(tmp_path, tensors, config)
    with pytest.raises(ValueError, match="config.json lacks hidden_size"):
        kbm.models.BertEncoder.from_checkpoint(path)


@pytest.mark.parametrize(
    "dtype,output",
    [("float64", tf.float64), ("mixed_bfloat16", tf.bfloat16)],
)
def test_dtype_policies(dtype, output):
    encoder = small_encoder(dtype=dtype)
    assert encoder(small_inputs()).dtype == output
    assert encoder.get_config()["dtype"] == dtype
    clone = kbm.models.BertEncoder.from_config(encoder.get_config())
    assert clone(small_inputs()).dtype == output
