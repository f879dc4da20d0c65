"""kbm.layers.GroupedQueryAttention: Keras 3's GroupQueryAttention, flash."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.ops import _loader
from keras_bigmodels.testing import (
    assert_close,
    kbm_ops_in,
    random_tensor,
    run_layer_test,
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


def test_sliding_window_runs_the_kernel_and_scores_the_reference(
    monkeypatch,
):
    monkeypatch.setattr(_loader, "_warned", set())
    x = random_tensor((1, 8, 12), tf.float32, 3)
    layer = kbm.layers.GroupedQueryAttention(8, 2, 1, sliding_window=2)
    layer(x, x)
    ops = kbm_ops_in(
        tf.function(lambda x: layer(x, x)).get_concrete_function(x)
    )
    assert ops == ["Kbm>FlashAttention"]
    with pytest.warns(
        kbm.config.FusedKernelFallbackWarning, match="return_attention_scores"
    ):
        y, scores = layer(x, x, return_attention_scores=True)
    s = np.asarray(scores)[0, 0]
    assert np.all(s[np.abs(np.subtract.outer(range(8), range(8))) >= 2] == 0)
    assert_close(y, layer(x, x), 1e-5, 1e-5)


def test_masked_query_rows_get_zero_attention():
    tokens = np.array([[1, 2, 3, 0, 0]])
    layer = kbm.layers.GroupedQueryAttention(4, 2, 1, use_bias=False)
    x = random_tensor((1, 5, 8), tf.float32, 4)
    mask = tf.constant(tokens != 0)
    query_mask = tf.broadcast_to(mask[:, :, None], (1, 5, 5))
    for fused in (True, False):
        with kbm.config.fused_kernels(fused):
            y = layer(x, x, attention_mask=query_mask)
        np.testing.assert_array_equal(np.asarray(y)[0, 3:], 0.0)


def test_dropout_kernel_and_reference_agree():
    x = random_tensor((2, 6, 12), tf.float32, 5)
    kw = dict(head_dim=4, num_query_heads=4, num_key_value_heads=2)
    a = kbm.layers.GroupedQueryAttention(**kw, dropout=0.3, seed=3)
    b = kbm.layers.GroupedQueryAttention(
        **kw, dropout=0.3, seed=3, flash_attention=False
    )
    a(x, x)
    b(x, x)
    b.set_weights(a.get_weights())
    ops = kbm_ops_in(
        tf.function(lambda x: a(x, x, training=True)).get_concrete_function(x)
    )
    assert ops == ["Kbm>FlashAttention"]
    # The same seed state for both (tf-keras draws under the global seed).
    tf.keras.utils.set_random_seed(3) if IS_LEGACY_KERAS else None
    ya = a(x, x, training=True)
    tf.keras.utils.set_random_seed(3) if IS_LEGACY_KERAS else None
    yb = b(x, x, training=True)
    assert_close(ya, yb, 1e-5, 1e-5)
    assert not np.allclose(np.asarray(ya), np.asarray(a(x, x)))


def test_compute_attention_override_gets_repeated_heads():
    shapes = []

    class Sub(kbm.layers.GroupedQueryAttention):
        def _compute_attention(
            self, query, key, value, attention_mask=None, training=None
        ):
            shapes.append((key.shape[2], attention_mask is None))
            return super()._compute_attention(
                query, key, value, attention_mask, training
            )

    x = random_tensor((1, 5, 8), tf.float32, 6)
    ref = kbm.layers.GroupedQueryAttention(4, 4, 2)
    layer = Sub(4, 4, 2)
    ref(x, x)
    layer(x, x)
    layer.set_weights(ref.get_weights())
    y = layer(x, x, use_causal_mask=True)
    assert shapes[-1] == (4, False)
    assert_close(y, ref(x, x, use_causal_mask=True), 1e-5, 1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        kbm.layers.GroupedQueryAttention(8, 6, 4)
    with pytest.raises(ValueError, match="Received: head_dim=0"):
        kbm.layers.GroupedQueryAttention(0, 6, 3)
    layer = kbm.layers.GroupedQueryAttention(8, 6, 3)
    with pytest.raises(ValueError, match="last dimension of `query_shape`"):
        layer.compute_output_shape((2, 4, 8), (2, 4, 6))
    with pytest.raises(ValueError, match="except the last one"):
        layer.compute_output_shape((2, 4, 8), (2, 4, 8), (2, 5, 8))


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="Keras 3 symbolic calls")
def test_symbolic_call_with_scores(keras):
    q = keras.Input((7, 16), batch_size=2)
    v = keras.Input((5, 16), batch_size=2)
    layer = kbm.layers.GroupedQueryAttention(8, 4, 2)
    out, scores = layer(q, v, return_attention_scores=True)
    assert out.shape == (2, 7, 16)
    assert scores.shape == (2, 4, 7, 5)


# A [B, T, S] mask in which every query sees a key.
_MASK = np.random.default_rng(8).random((2, 5, 7)) > 0.4
_MASK[..., 0] = True


@pytest.mark.parametrize(
    "input_shape,init_kwargs,call_kwargs",
    [
        (((2, 5, 12), (2, 7, 12)), {}, {}),
        (((2, 5, 12), (2, 7, 12)), {}, {"attention_mask": _MASK}),
        (((2, 7, 12), (2, 7, 12)), {}, {"use_causal_mask": True}),
        (((2, 5, 12), (2, 7, 12)), {"dropout": 0.1, "seed": 3}, {}),
        (
            ((2, 7, 12), (2, 7, 12)),
            {"num_key_value_heads": 1, "sliding_window": 3},
            {"use_causal_mask": True},
        ),
    ],
    ids=["cross", "mask", "causal", "dropout", "mqa_sliding_window"],
)
def test_layer_contract(tmp_path, input_shape, init_kwargs, call_kwargs):
    run_layer_test(
        kbm.layers.GroupedQueryAttention,
        {
            "head_dim": 8,
            "num_query_heads": 4,
            "num_key_value_heads": 2,
            **init_kwargs,
        },
        input_shape,
        expected_output_shape=input_shape[0],
        expected_num_trainable_weights=8,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        call_kwargs=call_kwargs,
        tmp_dir=tmp_path,
    )
