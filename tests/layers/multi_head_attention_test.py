"""kbm.layers.MultiHeadAttention: Keras's layer, with the flash kernel."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.testing import (
    assert_close,
    check_model_contract,
    kbm_ops_in,
    random_tensor,
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
    x = emb(tokens)
    build_both(ref, ours, x, x)
    y_ref, y_ours = ref(x, x), ours(x, x)
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


def test_uses_the_kernel_only_when_it_can(keras):
    x = random_tensor((2, 6, 16), tf.float32, 2)
    layer = kbm.layers.MultiHeadAttention(num_heads=2, key_dim=8)
    layer(x, x)
    fused = tf.function(lambda x: layer(x, x, use_causal_mask=True))
    assert "Kbm>FlashAttention" in kbm_ops_in(fused.get_concrete_function(x))
    general = tf.ones((2, 6, 6), tf.bool)
    with pytest.warns(kbm.config.FusedKernelFallbackWarning):
        plain = tf.function(lambda x: layer(x, x, attention_mask=general))
        ops = kbm_ops_in(plain.get_concrete_function(x))
    assert "Kbm>FlashAttention" not in ops
    out, scores = layer(x, x, return_attention_scores=True)
    assert scores.shape == (2, 2, 6, 6)
    with pytest.raises(ValueError, match="return_attention_scores=True"):
        strict = kbm.layers.MultiHeadAttention(
            num_heads=2, key_dim=8, flash_attention=True
        )
        strict(x, x)
        strict(x, x, return_attention_scores=True)


def test_dropout_in_training_uses_keras_path(keras):
    x = random_tensor((2, 6, 16), tf.float32, 3)
    layer = kbm.layers.MultiHeadAttention(num_heads=2, key_dim=8, dropout=0.5)
    layer(x, x)
    a = layer(x, x, training=False)
    b = layer(x, x, training=False)
    assert_close(a, b, 0, 0)
    c = layer(x, x, training=True)
    assert not np.allclose(np.asarray(a), np.asarray(c))


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


def test_contract(keras, tmp_path):
    inputs = keras.Input((7, 16))
    h = kbm.layers.MultiHeadAttention(num_heads=2, key_dim=8)(
        inputs, inputs, use_causal_mask=True
    )
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    x = random_tensor((16, 7, 16), tf.float32, 5).numpy()
    check_model_contract(model, x, x[..., :1], tmp_path)
