"""kbm.layers.MultiHeadAttention: Keras's layer, with the flash kernel."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.testing import (
    assert_close,
    kbm_ops_in,
    random_tensor,
    run_layer_test,
)


def twins(keras, **kwargs):
    """A Keras MHA and a kbm MHA with the same weights."""
    ref = keras.layers.MultiHeadAttention(
        bias_initializer="random_normal", **kwargs
    )
    ours = kbm.layers.MultiHeadAttention(**kwargs)
    return ref, ours


def build_both(ref, ours, q, v):
    ref(q, v)
    ours(q, v)
    ours.set_weights(ref.get_weights())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("key_dim,value_dim", [(16, None), (8, 12)])
def test_matches_keras_with_copied_weights(keras, causal, key_dim, value_dim):
    q = random_tensor((2, 9, 24), tf.float32, 0)
    v = random_tensor((2, 11, 24), tf.float32, 1)
    if causal:
        v = q  # Keras's causal mask is square in practice.
    ref, ours = twins(keras, num_heads=3, key_dim=key_dim, value_dim=value_dim)
    build_both(ref, ours, q, v)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([q, v])
        y_ref = ref(q, v, use_causal_mask=causal)
        y_ours = ours(q, v, use_causal_mask=causal)
    assert_close(y_ours, y_ref, 1e-5, 1e-5)
    for a, b in zip(
        tape.gradient(y_ours, [q, v, *ours.trainable_weights]),
        tape.gradient(y_ref, [q, v, *ref.trainable_weights]),
    ):
        assert_close(a, b, 1e-4, 1e-4, what="gradient")


def test_padding_masks_from_keras_masking(keras):
    tokens = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]])
    emb = keras.layers.Embedding(10, 16, mask_zero=True)
    ref, ours = twins(keras, num_heads=2, key_dim=8)
    build_both(ref, ours, emb(tokens), emb(tokens))
    # Keras 3's layer removes its inputs' masks: one embedding call each.
    x_ref, x_ours = emb(tokens), emb(tokens)
    y_ref, y_ours = ref(x_ref, x_ref), ours(x_ours, x_ours)
    x = emb(tokens)
    valid = tokens != 0  # Outputs at padded queries are not meaningful.
    assert_close(
        np.asarray(y_ours)[valid], np.asarray(y_ref)[valid], 1e-5, 1e-5
    )
    # The same with an explicit [B, 1, S] key mask.
    mask = tf.constant(valid[:, None, :])
    assert_close(
        np.asarray(ours(x, x, attention_mask=mask))[valid],
        np.asarray(ref(x, x, attention_mask=mask))[valid],
        1e-5,
        1e-5,
    )


def test_every_mask_and_dropout_stay_on_the_kernel(keras):
    x = random_tensor((2, 6, 16), tf.float32, 2)
    layer = kbm.layers.MultiHeadAttention(num_heads=2, key_dim=8, dropout=0.1)
    layer(x, x)
    general = tf.constant(np.random.default_rng(0).random((2, 6, 6)) > 0.3)
    calls = {
        "causal": lambda x: layer(x, x, use_causal_mask=True),
        "general": lambda x: layer(x, x, attention_mask=general),
        "2d": lambda x: layer(x, x, attention_mask=general[0]),
        "dropout": lambda x: layer(x, x, training=True),
    }
    for name, fn in calls.items():
        ops = kbm_ops_in(tf.function(fn).get_concrete_function(x))
        assert ops == ["Kbm>FlashAttention"], name
    out, scores = layer(x, x, return_attention_scores=True)
    assert scores.shape == (2, 2, 6, 6)
    with pytest.raises(ValueError, match="Returning attention scores"):
        strict = kbm.layers.MultiHeadAttention(
            num_heads=2, key_dim=8, flash_attention=True
        )
        strict(x, x)
        strict(x, x, return_attention_scores=True)


@pytest.mark.parametrize("kind", ["general", "2d", "query_mask"])
def test_masks_match_keras(keras, kind):
    q = random_tensor((2, 7, 16), tf.float32, 6)
    ref, ours = twins(keras, num_heads=2, key_dim=8)
    build_both(ref, ours, q, q)
    rng = np.random.default_rng(1)
    if kind == "query_mask":
        tokens = np.array([[3, 4, 5, 1, 2, 0, 0], [1, 2, 3, 4, 5, 6, 7]])
        emb = keras.layers.Embedding(10, 16, mask_zero=True)
        # Keras's layer removes the input's mask: one embedding call each.
        x_ref, x_ours = emb(tokens), emb(tokens)
        y_ref, y_ours = ref(x_ref, x_ref), ours(x_ours, x_ours)
        valid = tokens != 0
        assert_close(
            np.asarray(y_ours)[valid], np.asarray(y_ref)[valid], 1e-5, 1e-5
        )
        # Masked query rows: zero attention, so the output is the bias.
        padded = np.asarray(y_ours)[~valid]
        bias = np.asarray(ours.get_weights()[-1])
        assert_close(padded, np.broadcast_to(bias, padded.shape), 1e-6, 1e-6)
        return
    mask = rng.random((2, 7, 7)) > 0.4
    mask[..., 0] = True  # Every query sees a key (Keras averages otherwise).
    if kind == "2d":
        mask = mask[0]
    assert_close(
        ours(q, q, attention_mask=mask),
        ref(q, q, attention_mask=mask),
        1e-5,
        1e-5,
    )


def test_dropout_in_training_runs_in_the_kernel(keras):
    x = random_tensor((2, 6, 16), tf.float32, 3)
    kw = dict(num_heads=2, key_dim=8, dropout=0.5)
    if not IS_LEGACY_KERAS:
        kw["seed"] = 7  # tf-keras's layer has no seed: the global one.
    keras.utils.set_random_seed(7)
    layer = kbm.layers.MultiHeadAttention(**kw)
    layer(x, x)
    a = layer(x, x, training=False)
    b = layer(x, x, training=False)
    assert_close(a, b, 0, 0)
    c = layer(x, x, training=True)
    assert not np.allclose(np.asarray(a), np.asarray(c))
    # The reference draws the same mask from the same seed state.
    twin = kbm.layers.MultiHeadAttention(**kw, flash_attention=False)
    again = kbm.layers.MultiHeadAttention(**kw)
    for other in (twin, again):
        other(x, x)
        other.set_weights(layer.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        keras.utils.set_random_seed(7)
        y_kernel = again(x, x, training=True)
        keras.utils.set_random_seed(7)
        y_reference = twin(x, x, training=True)
    assert_close(y_kernel, y_reference, 1e-5, 1e-5)
    assert_close(
        tape.gradient(y_kernel, x), tape.gradient(y_reference, x), 1e-5, 1e-5
    )


def test_compute_attention_override_is_used(keras):
    seen = []

    class Sub(kbm.layers.MultiHeadAttention):
        def _compute_attention(
            self, query, key, value, attention_mask=None, training=None, *a
        ):
            seen.append(attention_mask)
            out = tf.zeros_like(query)
            return out, None

    x = random_tensor((1, 4, 8), tf.float32, 4)
    layer = Sub(num_heads=2, key_dim=4, use_bias=False)
    y = layer(x, x, use_causal_mask=True)
    np.testing.assert_array_equal(np.asarray(y), 0.0)
    assert seen[-1] is not None  # The causal mask, not a flag it lacks.


def test_config_round_trip_without_kernel_choice(keras):
    layer = kbm.layers.MultiHeadAttention(
        num_heads=4, key_dim=8, flash_attention=True, rope_max_wavelength=500
    )
    config = layer.get_config()
    assert "flash_attention" not in config
    assert config["rope_max_wavelength"] == 500
    clone = kbm.layers.MultiHeadAttention.from_config(config)
    assert clone.rope_max_wavelength == 500
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is kbm.layers.MultiHeadAttention


def test_rotary_embedding_is_applied(keras):
    x = random_tensor((1, 5, 16), tf.float32, 4)
    plain = kbm.layers.MultiHeadAttention(num_heads=2, key_dim=8)
    rope = kbm.layers.MultiHeadAttention(
        num_heads=2, key_dim=8, rope_max_wavelength=100
    )
    plain(x, x)
    rope(x, x)
    rope.set_weights(plain.get_weights())
    assert not np.allclose(np.asarray(plain(x, x)), np.asarray(rope(x, x)))
    for fused in (True, False):
        kbm.config.fused_kernels(fused)
        try:
            y = rope(x, x, use_causal_mask=True)
        finally:
            kbm.config.fused_kernels(True)
        if fused:
            y_fused = y
    assert_close(y_fused, y, 1e-5, 1e-5)


# A [B, T, S] mask in which every query sees a key.
_MASK = np.random.default_rng(8).random((2, 5, 7)) > 0.4
_MASK[..., 0] = True


@pytest.mark.parametrize(
    "input_shape,init_kwargs,call_kwargs",
    [
        (((2, 5, 8), (2, 7, 8)), {}, {}),
        (((2, 5, 8), (2, 7, 8)), {"value_dim": 6}, {"attention_mask": _MASK}),
        (((2, 7, 8), (2, 7, 8)), {}, {"use_causal_mask": True}),
        (((2, 5, 8), (2, 7, 8)), {"dropout": 0.1}, {}),
        (((2, 7, 8), (2, 7, 8)), {"rope_max_wavelength": 100}, {}),
    ],
    ids=["cross", "mask", "causal", "dropout", "rope"],
)
def test_layer_contract(tmp_path, input_shape, init_kwargs, call_kwargs):
    run_layer_test(
        kbm.layers.MultiHeadAttention,
        {"num_heads": 2, "key_dim": 4, **init_kwargs},
        input_shape,
        expected_output_shape=input_shape[0],
        expected_num_trainable_weights=8,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        call_kwargs=call_kwargs,
        tmp_dir=tmp_path,
    )
