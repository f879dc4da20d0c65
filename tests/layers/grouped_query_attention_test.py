"""kbm.layers.GroupedQueryAttention: Keras 3's GroupQueryAttention, flash."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.layers._attention_core import dense_attention
from keras_bigmodels.testing import (
    assert_close,
    check_model_contract,
    kbm_ops_in,
    random_tensor,
)


def numpy_gqa(layer, q_in, v_in, causal):
    """The layer's math in NumPy from its own weights (no Keras)."""
    w = [np.asarray(x, np.float64) for x in layer.get_weights()]
    wq, bq, wk, bk, wv, bv, wo, bo = w
    q = np.einsum("bqm,muh->bquh", q_in, wq) + bq
    k = np.einsum("bkm,mvh->bkvh", v_in, wk) + bk
    v = np.einsum("bkm,mvh->bkvh", v_in, wv) + bv
    rep = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, rep, 2), np.repeat(v, rep, 2)
    s = np.einsum("bquh,bkuh->buqk", q, k) / np.sqrt(q.shape[-1])
    if causal:
        t = s.shape[-1]
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("buqk,bkuh->bquh", p, v)
    return np.einsum("bquh,uhm->bqm", o, wo) + bo


@pytest.mark.parametrize("heads", [(4, 2), (4, 1), (4, 4)])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_numpy(heads, causal):
    x = random_tensor((2, 9, 12), tf.float32, 0)
    layer = kbm.layers.GroupedQueryAttention(
        head_dim=8,
        num_query_heads=heads[0],
        num_key_value_heads=heads[1],
        bias_initializer="random_normal",
    )
    y = layer(x, x, use_causal_mask=causal)
    assert_close(y, numpy_gqa(layer, x.numpy(), x.numpy(), causal), 1e-5, 1e-5)


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="tf-keras has no GQA layer")
def test_matches_keras3_layer_with_copied_weights(keras):
    x = random_tensor((2, 9, 12), tf.float32, 1)
    ref = keras.layers.GroupQueryAttention(
        head_dim=8,
        num_query_heads=6,
        num_key_value_heads=2,
        bias_initializer="random_normal",
    )
    ours = kbm.layers.GroupedQueryAttention(
        head_dim=8, num_query_heads=6, num_key_value_heads=2
    )
    ref(x, x)
    ours(x, x)
    assert [w.shape for w in ours.weights] == [w.shape for w in ref.weights]
    ours.set_weights(ref.get_weights())
    for causal in (False, True):
        assert_close(
            ours(x, x, use_causal_mask=causal),
            ref(x, x, use_causal_mask=causal),
            1e-5,
            1e-5,
        )
    out, scores = ours(x, x, return_attention_scores=True)
    _, ref_scores = ref(x, x, return_attention_scores=True)
    assert_close(scores, ref_scores, 1e-5, 1e-5)
    assert set(ours.get_config()) >= set(ref.get_config()) - {"flash_attention"}


def test_kernel_and_reference_paths_agree():
    x = random_tensor((2, 7, 12), tf.float32, 2)
    mask = tf.constant([[True] * 7, [True] * 4 + [False] * 3])
    layer = kbm.layers.GroupedQueryAttention(8, 4, 2)
    layer(x, x)
    fused = layer(x, x, attention_mask=mask[:, None, :], use_causal_mask=True)
    ops = kbm_ops_in(
        tf.function(lambda x: layer(x, x)).get_concrete_function(x)
    )
    assert ops == ["Kbm>FlashAttention"]
    with kbm.config.fused_kernels(False):
        reference = layer(
            x, x, attention_mask=mask[:, None, :], use_causal_mask=True
        )
    assert_close(fused, reference, 1e-5, 1e-5)


def test_sliding_window_and_scores_use_the_reference():
    x = random_tensor((1, 8, 12), tf.float32, 3)
    layer = kbm.layers.GroupedQueryAttention(8, 2, 1, sliding_window=2)
    with pytest.warns(
        kbm.config.FusedKernelFallbackWarning, match="sliding_window"
    ):
        _, scores = layer(x, x, return_attention_scores=True)
    s = np.asarray(scores)[0, 0]
    assert np.all(s[np.abs(np.subtract.outer(range(8), range(8))) >= 2] == 0)


def test_dense_attention_zeroes_fully_masked_rows():
    q = random_tensor((1, 3, 2, 4), tf.float32, 4)
    mask = tf.constant([[[True, True], [False, False], [True, False]]])
    out, probs = dense_attention(q, q[:, :2], q[:, :2], mask, 0.5)
    np.testing.assert_array_equal(np.asarray(out)[0, 1], 0.0)
    np.testing.assert_array_equal(np.asarray(probs)[0, :, 1], 0.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        kbm.layers.GroupedQueryAttention(8, 6, 4)
    with pytest.raises(ValueError, match="Received: head_dim=0"):
        kbm.layers.GroupedQueryAttention(0, 6, 3)
    with pytest.raises(ValueError, match="Dropout is not supported"):
        kbm.layers.GroupedQueryAttention(
            8, 6, 3, dropout=0.1, flash_attention=True
        )


def test_contract(keras, tmp_path):
    inputs = keras.Input((7, 12))
    h = kbm.layers.GroupedQueryAttention(8, 4, 2)(
        inputs, inputs, use_causal_mask=True
    )
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    x = random_tensor((16, 7, 12), tf.float32, 5).numpy()
    check_model_contract(model, x, x[..., :1], tmp_path)
