"""kbm.layers.TransformerEncoder: a block on the fused layers."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.testing import (
    assert_close,
    kbm_ops_in,
    random_tensor,
    run_layer_test,
)


def keras_post_ln_block(keras, x, weights, heads, epsilon):
    """BERT's post-LN block from stock Keras layers, given our weights."""
    hidden = x.shape[-1]
    mha = keras.layers.MultiHeadAttention(heads, hidden // heads)
    ln1 = keras.layers.LayerNormalization(epsilon=epsilon)
    ff1 = keras.layers.Dense(weights[10].shape[-1], activation="gelu")
    ff2 = keras.layers.Dense(hidden)
    ln2 = keras.layers.LayerNormalization(epsilon=epsilon)
    mha(x, x)
    ln1.build(x.shape)
    ff1.build(x.shape)
    ff2.build(x.shape[:-1] + (weights[10].shape[-1],))
    ln2.build(x.shape)
    ws = list(weights)
    for layer in (mha, ln1, ff1, ff2, ln2):
        n = len(layer.weights)
        layer.set_weights(ws[:n])
        ws = ws[n:]
    h = ln1(x + mha(x, x))
    return ln2(h + ff2(ff1(h)))


def test_post_ln_matches_a_stock_keras_block(keras):
    x = random_tensor((2, 10, 32), tf.float32, 0)
    block = kbm.layers.TransformerEncoder(
        intermediate_dim=64, num_heads=4, bias_initializer="random_normal"
    )
    y = block(x)
    expected = keras_post_ln_block(keras, x, block.get_weights(), 4, 1e-5)
    assert_close(y, expected, 1e-4, 1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(activation="gelu_tanh", norm_first=True),
        dict(activation="relu", norm="rms"),
        dict(
            activation="swiglu",
            norm="rms",
            norm_first=True,
            num_key_value_heads=2,
        ),
        dict(num_key_value_heads=1, rope_max_wavelength=100),
    ],
)
def test_variants_agree_with_kernels_off(kwargs):
    x = random_tensor((2, 9, 32), tf.float32, 1)
    block = kbm.layers.TransformerEncoder(64, 4, **kwargs)
    fused = block(x)
    graph = tf.function(block).get_concrete_function(x)
    assert "Kbm>FlashAttention" in kbm_ops_in(graph)
    with kbm.config.fused_kernels(False):
        reference = block(x)
    assert_close(fused, reference, 1e-4, 1e-4)


def test_padding_masks_propagate(keras):
    tokens = np.array([[5, 6, 7, 0, 0], [1, 2, 3, 4, 5]])
    emb = keras.layers.Embedding(10, 32, mask_zero=True)
    block = kbm.layers.TransformerEncoder(64, 4)
    x = emb(tokens)
    y_masked = np.asarray(block(x))
    y_explicit = np.asarray(block(emb(tokens) * 1.0, padding_mask=tokens != 0))
    y_unmasked = np.asarray(block(x * 1.0))
    valid = tokens != 0
    assert_close(y_masked[valid], y_explicit[valid], 1e-5, 1e-5)
    assert not np.allclose(y_masked[0, :3], y_unmasked[0, :3])
    np.testing.assert_array_equal(
        np.asarray(block.compute_mask(x, emb.compute_mask(tokens))), valid
    )
    # In a functional model the mask reaches the next layer.
    inputs = keras.Input((5,), dtype="int32")
    h = kbm.layers.TransformerEncoder(64, 4)(emb(inputs))
    pooled = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, pooled)
    pooled_y = np.asarray(model(tokens))
    manual = np.asarray(
        tf.reduce_sum(model.layers[2](emb(tokens)) * valid[..., None], 1)
        / valid.sum(1, keepdims=True)
    )
    assert_close(pooled_y, manual, 1e-5, 1e-5)


def test_classifier_learns_a_sequence_task(keras):
    # Label: does token 1 occur more often than token 2? Needs attention
    # across the whole sequence.
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 6, size=(600, 12))
    labels = ((tokens == 1).sum(1) > (tokens == 2).sum(1)).astype("int32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(6, 32)(inputs)
    for _ in range(2):
        h = kbm.layers.TransformerEncoder(64, 4, norm_first=True)(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        tokens[:500], labels[:500], epochs=12, batch_size=32, verbose=0
    )
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0]
    _, accuracy = model.evaluate(tokens[500:], labels[500:], verbose=0)
    chance = max(labels[500:].mean(), 1 - labels[500:].mean())
    assert accuracy > chance + 0.1


def test_config_round_trip(keras):
    block = kbm.layers.TransformerEncoder(
        64,
        4,
        num_key_value_heads=2,
        activation="swiglu",
        norm="rms",
        norm_first=True,
        layer_norm_epsilon=1e-6,
        rope_max_wavelength=1000,
    )
    config = block.get_config()
    clone = kbm.layers.TransformerEncoder.from_config(config)
    assert clone.get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(block))
    assert type(restored) is kbm.layers.TransformerEncoder


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(intermediate_dim=0, num_heads=4), "intermediate_dim=0"),
        (
            dict(intermediate_dim=8, num_heads=4, num_key_value_heads=3),
            "num_key_value_heads=3",
        ),
        (
            dict(intermediate_dim=8, num_heads=4, activation="tanh"),
            "activation='tanh'",
        ),
        (dict(intermediate_dim=8, num_heads=4, norm="batch"), "norm='batch'"),
        (dict(intermediate_dim=8, num_heads=4, dropout=1.5), "dropout=1.5"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kbm.layers.TransformerEncoder(**kwargs)


def test_hidden_size_not_divisible_by_heads():
    with pytest.raises(
        ValueError,
        match=r"hidden size \(30\) must be a "
        r"multiple of num_heads \(4\)",
    ):
        kbm.layers.TransformerEncoder(8, 4)(tf.zeros((1, 3, 30)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dropout": 0.1},
        {"norm": "rms", "norm_first": True, "activation": "swiglu"},
        {"num_key_value_heads": 1, "rope_max_wavelength": 10000},
    ],
)
def test_layer_contract(tmp_path, kwargs):
    run_layer_test(
        kbm.layers.TransformerEncoder,
        {"intermediate_dim": 32, "num_heads": 2, **kwargs},
        (16, 7, 16),
        expected_output_shape=(16, 7, 16),
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        rtol=1e-4,
        atol=1e-4,
        tmp_dir=tmp_path,
    )


def test_attention_dropout_zero_keeps_training_on_the_kernel(keras):
    import warnings

    block = kbm.layers.TransformerEncoder(
        32, num_heads=2, dropout=0.1, attention_dropout=0.0
    )
    x = tf.random.normal([2, 8, 16])
    with warnings.catch_warnings():
        warnings.simplefilter("error", kbm.config.FusedKernelFallbackWarning)
        block(x, training=True)
    config = block.get_config()
    assert config["attention_dropout"] == 0.0
    clone = kbm.layers.TransformerEncoder.from_config(config)
    assert clone.attention_dropout == 0.0 and clone.dropout == 0.1
    with pytest.raises(ValueError, match="attention_dropout must be in"):
        kbm.layers.TransformerEncoder(32, num_heads=2, attention_dropout=1.5)
    decoder = kbm.layers.TransformerDecoder(
        32, num_heads=2, dropout=0.1, attention_dropout=0.0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", kbm.config.FusedKernelFallbackWarning)
        decoder(x, x, training=True)
