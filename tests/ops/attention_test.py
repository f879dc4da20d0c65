"""Flash attention: golden values, kernel vs reference, gradients, errors."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.attention import TOLERANCES
from keras_bigmodels.testing import (
    assert_close,
    kernel_vs_reference,
    random_tensor,
    run_python,
)


def numpy_attention(
    q,
    k,
    v,
    causal=False,
    key_mask=None,
    scale=None,
    alignment="bottom_right",
    dense=None,
):
    """Softmax attention in float64 NumPy, one (batch, head) at a time."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    out = np.zeros((b, tq, hq, v.shape[-1]))
    for bi in range(b):
        for h in range(hq):
            g = h // (hq // hkv)
            s = q[bi, :, h] @ k[bi, :, g].T * scale
            allowed = np.ones((tq, tk), bool)
            if key_mask is not None:
                allowed &= np.asarray(key_mask)[bi][None, :]
            if dense is not None:
                allowed &= dense
            if causal:
                off = tk - tq if alignment == "bottom_right" else 0
                allowed &= (
                    np.arange(tk)[None, :] <= np.arange(tq)[:, None] + off
                )
            s = np.where(allowed, s, -np.inf)
            m = s.max(-1, keepdims=True)
            p = np.where(allowed, np.exp(s - np.where(np.isinf(m), 0, m)), 0)
            denom = p.sum(-1, keepdims=True)
            p = np.divide(p, denom, out=np.zeros_like(p), where=denom > 0)
            out[bi, :, h] = p @ v[bi, :, g]
    return out


def qkv(b, tq, tk, hq, hkv, d, dv, dtype=tf.float32, seed=0):
    return (
        random_tensor((b, tq, hq, d), dtype, seed),
        random_tensor((b, tk, hkv, d), dtype, seed + 1),
        random_tensor((b, tk, hkv, dv), dtype, seed + 2),
    )


def test_reference_hand_computed():
    # One query, two keys with scores 0 and ln(3) after scaling: weights
    # 1/4 and 3/4.
    q = tf.constant([[[[1.0]]]], tf.float64)
    k = tf.constant([[[[0.0]], [[math.log(3.0)]]]], tf.float64)
    v = tf.constant([[[[10.0]], [[20.0]]]], tf.float64)
    for fused in (False, True):
        y = kbm.ops.flash_attention(q, k, v, scale=1.0, use_fused_kernel=fused)
        np.testing.assert_allclose(y.numpy(), [[[[17.5]]]], rtol=1e-12)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(
    "case",
    [
        dict(b=2, tq=9, tk=9, hq=4, hkv=4, d=16, dv=16),
        dict(b=1, tq=70, tk=130, hq=6, hkv=2, d=32, dv=24, causal=True),
        dict(
            b=2, tq=130, tk=70, hq=3, hkv=1, d=8, dv=8, causal=True, mask=True
        ),
        dict(
            b=2,
            tq=33,
            tk=65,
            hq=2,
            hkv=2,
            d=16,
            dv=16,
            causal=True,
            alignment="top_left",
            mask=True,
        ),
    ],
)
def test_matches_numpy(fused, case):
    case = dict(case)
    causal = case.pop("causal", False)
    alignment = case.pop("alignment", "bottom_right")
    mask = case.pop("mask", False)
    q, k, v = qkv(**case, dtype=tf.float64)
    key_mask = None
    if mask:
        key_mask = (
            np.random.default_rng(1).random((case["b"], case["tk"])) > 0.4
        )
        key_mask[0, :] = False  # A batch element with no key at all.
    y = kbm.ops.flash_attention(
        q,
        k,
        v,
        causal=causal,
        key_mask=key_mask,
        causal_alignment=alignment,
        use_fused_kernel=fused,
    )
    expected = numpy_attention(q, k, v, causal, key_mask, alignment=alignment)
    # The scale is used at float32 precision (a 3e-8 relative shift).
    assert_close(y, expected, 1e-7, 1e-7)


SHAPES = [
    (t, d, heads)
    for t in (1, 7, 63, 64, 65, 257)
    for d, heads in ((16, (12, 12)), (64, (12, 4)), (80, (8, 1)), (128, (4, 4)))
]


@pytest.mark.parametrize("t,d,heads", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_kernel_vs_reference_float32(t, d, heads, causal):
    q, k, v = qkv(1, t, t, heads[0], heads[1], d, d, seed=t + d)
    kernel_vs_reference(
        kbm.ops.flash_attention, [q, k, v], TOLERANCES, causal=causal
    )


@pytest.mark.parametrize(
    "dtype", [tf.float16, tf.bfloat16, tf.float64], ids=lambda d: d.name
)
@pytest.mark.parametrize("causal", [False, True])
def test_kernel_vs_reference_dtypes(dtype, causal):
    q, k, v = qkv(2, 65, 65, 4, 2, 32, 32, dtype=dtype)
    kernel_vs_reference(
        kbm.ops.flash_attention, [q, k, v], TOLERANCES, causal=causal
    )


@pytest.mark.parametrize("tq,tk", [(1, 129), (65, 200), (200, 65)])
@pytest.mark.parametrize("alignment", ["bottom_right", "top_left"])
def test_kernel_vs_reference_masks_and_lengths(tq, tk, alignment):
    q, k, v = qkv(3, tq, tk, 4, 2, 64, 48, seed=5)
    lengths = tf.constant([tk, tk // 2, 0])  # The last sees no key.
    kernel_vs_reference(
        kbm.ops.flash_attention,
        [q, k, v],
        TOLERANCES,
        causal=True,
        key_mask=lengths,
        causal_alignment=alignment,
    )
    mask = np.random.default_rng(2).random((3, tk)) > 0.5
    kernel_vs_reference(
        kbm.ops.flash_attention, [q, k, v], TOLERANCES, key_mask=mask
    )


def test_fully_masked_rows_are_zero_with_finite_gradients():
    q, k, v = qkv(2, 5, 6, 2, 2, 8, 8)
    mask = tf.constant([[False] * 6, [True] * 6])
    for fused in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            y = kbm.ops.flash_attention(
                q, k, v, key_mask=mask, use_fused_kernel=fused
            )
        grads = tape.gradient(y, [q, k, v])
        np.testing.assert_array_equal(y.numpy()[0], 0.0)
        for g in grads:
            assert np.isfinite(g.numpy()).all()
        np.testing.assert_array_equal(grads[0].numpy()[0], 0.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("causal", [False, True])
def test_non_finite_masked_keys_do_not_leak(bad, causal):
    # Padding positions (key-masked) holding NaN or inf in k and v: the
    # output and the gradients equal those with zeros there (fuzzing found
    # a NaN value in a masked key reaching the gradients through delta =
    # rowsum(dO * O), and 0 * NaN reaching the output).
    q, k, v = qkv(2, 5, 6, 2, 1, 8, 8)
    mask = np.ones((2, 6), bool)
    mask[0, 4:] = mask[1, 1] = False
    masked = tf.constant(~mask)[:, :, None, None]
    d_o = tf.random.stateless_normal(q.shape[:-1] + (8,), [3, 4])
    results = []
    for fill in (bad, 0.0):
        kb, vb = (tf.where(masked, tf.cast(fill, t.dtype), t) for t in (k, v))
        for fused in (True, False):
            with tf.GradientTape() as tape:
                tape.watch([q, kb, vb])
                y = kbm.ops.flash_attention(
                    q,
                    kb,
                    vb,
                    causal=causal,
                    key_mask=tf.constant(mask),
                    use_fused_kernel=fused,
                )
            grads = tape.gradient(y, [q, kb, vb], output_gradients=d_o)
            results.append([y, *grads])
    for got, want in zip(results[0] + results[1], results[2] + results[3]):
        assert np.isfinite(got.numpy()).all()
        assert_close(got, want, **TOLERANCES[tf.float32])


@pytest.mark.parametrize(
    "dtype",
    [tf.float16, tf.bfloat16, tf.float32, tf.float64],
    ids=lambda d: d.name,
)
def test_huge_tied_scores_keep_the_softmax_sum(dtype):
    # Scores of 1e27 tied over 13 keys: lse = m + log(13) rounds to m, and
    # the backward pass's P = exp(S - lse) was 1 per key instead of 1/13
    # (fuzzing found dK 13x too large). Golden values: P = 1/13 everywhere.
    tq, tk = 130, 13  # three query tiles
    # float16: dK must fit (scores of 4096 are past the limit too); the
    # scale attribute is a float32.
    scale = float(np.float32(4096.0 if dtype == tf.float16 else 1e27))
    q = tf.ones([1, tq, 2, 1], dtype)
    k = tf.ones([1, tk, 1, 1], dtype)
    v = tf.cast(tf.reshape(tf.range(tk), [1, tk, 1, 1]), dtype)
    d_o = tf.cast(tf.random.stateless_normal([1, tq, 2, 1], [1, 2]), dtype)
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        y = kbm.ops.flash_attention(q, k, v, scale=scale, use_fused_kernel=True)
    _, dk, dv = tape.gradient(y, [q, k, v], output_gradients=d_o)
    tol = TOLERANCES[dtype]
    assert_close(y, tf.fill(y.shape, tf.cast(6.0, dtype)), **tol)
    d_o64 = tf.cast(d_o, tf.float64)
    want_dv = tf.fill(dv.shape, tf.reduce_sum(d_o64) / tk)
    assert_close(tf.cast(dv, tf.float64), want_dv, **tol, what="dV")
    # dK_j = scale * sum_i P_ij (dP_ij - delta_i) q_i, with dP_ij = dO_i v_j
    # and delta_i = dO_i * 6.
    want_dk = scale / tk * (np.arange(tk) - 6.0) * float(tf.reduce_sum(d_o64))
    assert_close(
        tf.reshape(tf.cast(dk, tf.float64), [tk]),
        want_dk,
        rtol=tol["rtol"],
        atol=tol["atol"] * scale,
        what="dK",
    )


@pytest.mark.parametrize(
    "dtype", [tf.bfloat16, tf.float32, tf.float64], ids=lambda d: d.name
)
def test_huge_scores_on_some_rows_match_the_reference(dtype):
    # Rows past kLseExactLimit (every third query, scores ~1e27 against
    # equal keys) next to ordinary rows, with a key mask and causality.
    q, _, v = qkv(2, 130, 70, 2, 1, 4, 3, dtype=dtype, seed=9)
    huge = (np.arange(130) % 3 == 0)[None, :, None, None]
    q = tf.where(huge, tf.cast(1e27, dtype), q)
    k = tf.ones([2, 70, 1, 4], dtype)
    kernel_vs_reference(
        kbm.ops.flash_attention,
        [q, k, v],
        TOLERANCES,
        causal=True,
        key_mask=tf.constant([70, 33]),
    )


def test_compute_gradient_float64():
    q, k, v = qkv(1, 5, 7, 2, 1, 4, 3, dtype=tf.float64)
    mask = tf.constant([[True, True, False, True, True, True, False]])

    def f(q, k, v):
        return kbm.ops.flash_attention(
            q, k, v, causal=True, key_mask=mask, use_fused_kernel=True
        )

    theoretical, numerical = tf.test.compute_gradient(f, [q, k, v])
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


def test_second_order_gradient_matches_reference():
    q, k, v = qkv(1, 6, 6, 2, 2, 4, 4, dtype=tf.float64)

    def penalty_grad(fused):
        with tf.GradientTape() as outer:
            outer.watch([q, k, v])
            with tf.GradientTape() as inner:
                inner.watch([q, k, v])
                y = kbm.ops.flash_attention(
                    q, k, v, causal=True, use_fused_kernel=fused
                )
                loss = tf.reduce_sum(y**2)
            grads = inner.gradient(loss, [q, k, v])
            penalty = sum(tf.reduce_sum(g**2) for g in grads)
        return outer.gradient(penalty, [q, k, v])

    for a, b in zip(penalty_grad(True), penalty_grad(False)):
        assert_close(a, b, 1e-9, 1e-9, what="second-order gradient")


def test_unknown_shapes_in_tf_function():
    spec = tf.TensorSpec([None, None, 4, 16], tf.float32)

    @tf.function(input_signature=[spec, spec, spec])
    def f(q, k, v):
        return kbm.ops.flash_attention(
            q, k, v, causal=True, use_fused_kernel=True
        )

    q, k, v = qkv(2, 9, 9, 4, 4, 16, 16)
    assert_close(f(q, k, v), numpy_attention(q, k, v, True), 1e-5, 1e-5)


def test_attention_bias_falls_back_to_the_reference(monkeypatch):
    monkeypatch.setattr(_loader, "_warned", set())
    q, k, v = qkv(1, 4, 4, 2, 2, 8, 8)
    bias = tf.zeros((1, 2, 4, 4))
    with pytest.warns(
        kbm.config.FusedKernelFallbackWarning, match="attention_bias"
    ):
        y = kbm.ops.flash_attention(q, k, v, attention_bias=bias)
    assert_close(y, numpy_attention(q, k, v), 1e-5, 1e-5)
    with pytest.raises(ValueError, match="use_fused_kernel=True.*bias"):
        kbm.ops.flash_attention(
            q, k, v, attention_bias=bias, use_fused_kernel=True
        )


def test_avx_baseline_variant_matches_reference():
    out = run_python(
        """
        import tensorflow as tf
        import keras_bigmodels as kbm
        from keras_bigmodels.ops.attention import TOLERANCES
        from keras_bigmodels.testing import kernel_vs_reference, random_tensor
        assert "active_isa=avx;" in kbm.ops.kernels_available().info
        q = random_tensor((2, 70, 4, 48), tf.float32, 0)
        k = random_tensor((2, 70, 2, 48), tf.float32, 1)
        v = random_tensor((2, 70, 2, 48), tf.float32, 2)
        for causal in (False, True):
            kernel_vs_reference(kbm.ops.flash_attention, [q, k, v],
                                TOLERANCES, causal=causal)
        print("ok")
        """,
        env={"KERAS_BIGMODELS_ISA": "avx"},
        reuse="avx_baseline",  # One process for all baseline checks.
    )
    assert out.strip().endswith("ok")


@pytest.mark.parametrize("fused", [True, False])
def test_bad_inputs_raise_clear_errors(fused):
    kw = {"use_fused_kernel": fused}
    q, k, v = qkv(2, 5, 5, 4, 2, 8, 8)
    with pytest.raises(ValueError, match=r"q must have rank 4.*\(5, 4, 8\)"):
        kbm.ops.flash_attention(q[0], k, v, **kw)
    with pytest.raises(ValueError, match="same head_dim"):
        kbm.ops.flash_attention(q, k[..., :4], v, **kw)
    with pytest.raises(
        ValueError,
        match=r"query heads \(4\) must be a "
        r"multiple of the number of key/value heads \(3\)",
    ):
        kbm.ops.flash_attention(
            q,
            tf.concat([k, k[:, :, :1]], 2),
            tf.concat([v, v[:, :, :1]], 2),
            **kw,
        )
    with pytest.raises(
        ValueError,
        match=r"key_mask must have shape "
        r"\[batch, key_length\] = \(2, 5\).*\(2, 4\)",
    ):
        kbm.ops.flash_attention(
            q, k, v, key_mask=tf.ones((2, 4), tf.bool), **kw
        )
    with pytest.raises(ValueError, match="same length"):
        kbm.ops.flash_attention(q, k, v[:, :3], **kw)
    with pytest.raises(TypeError, match="same dtype"):
        kbm.ops.flash_attention(q, k, tf.cast(v, tf.float64), **kw)
    with pytest.raises(ValueError, match="causal_alignment"):
        kbm.ops.flash_attention(
            q, k, v, causal=True, causal_alignment="left", **kw
        )


def test_kernel_checks_its_inputs_directly():
    lib = _loader.library()
    q, k, v = qkv(2, 5, 5, 4, 2, 8, 8)
    none = tf.zeros([0], tf.bool)
    seed = tf.constant([1, 2], tf.int64)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"multiple of the number of key/value heads",
    ):
        lib.kbm_flash_attention(
            q,
            tf.concat([k, k[:, :, :1]], 2),
            tf.concat([v, v[:, :, :1]], 2),
            none,
            none,
            seed,
            scale=1.0,
        )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"key_mask must have shape \[2,5\]",
    ):
        lib.kbm_flash_attention(
            q, k, v, tf.ones((2, 3), tf.bool), none, seed, scale=1.0
        )
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"k must have the head_dim of q"
    ):
        lib.kbm_flash_attention(q, k[..., :4], v, none, none, seed, scale=1.0)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"mask must have shape \[2 or 1"
    ):
        lib.kbm_flash_attention(
            q, k, v, none, tf.ones((3, 5, 5), tf.bool), seed, scale=1.0
        )
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"seed must have shape \[2\]"
    ):
        lib.kbm_flash_attention(
            q, k, v, none, none, seed[:1], scale=1.0, dropout_rate=0.1
        )
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"dropout_rate must be in"
    ):
        lib.kbm_flash_attention(
            q, k, v, none, none, seed, scale=1.0, dropout_rate=1.0
        )


# ------------------------------------------------------------ dense masks


def _random_mask(shape, p, seed):
    return np.random.default_rng(seed).random(shape) < p


DENSE_MASKS = {
    # A general mask, one per batch element, with a fully masked row.
    "general": lambda b, tq, tk: (
        np.concatenate(
            [np.zeros((1, 1, tk), bool), _random_mask((1, tq - 1, tk), 0.6, 3)],
            1,
        ).repeat(b, 0)
        & _random_mask((b, tq, tk), 0.9, 4)
    ),
    # One [Tq, Tk] mask broadcast over the batch.
    "2d": lambda b, tq, tk: _random_mask((tq, tk), 0.5, 5),
    "shared_batch": lambda b, tq, tk: _random_mask((1, tq, tk), 0.5, 6),
    # Key padding and causal masks given densely (blocks the kernel skips).
    "key_padding": lambda b, tq, tk: np.broadcast_to(
        (np.arange(tk) < np.array([tk, tk // 3])[:b, None])[:, None],
        (b, tq, tk),
    ),
    "causal": lambda b, tq, tk: np.broadcast_to(
        np.arange(tk)[None, :] <= np.arange(tq)[:, None], (b, tq, tk)
    ),
    # Keras's query mask: whole rows off.
    "query": lambda b, tq, tk: np.broadcast_to(
        (np.arange(tq) < np.array([tq, tq // 2])[:b, None])[:, :, None],
        (b, tq, tk),
    ),
}


@pytest.mark.parametrize("kind", sorted(DENSE_MASKS))
def test_dense_mask_matches_numpy(kind):
    b, tq, tk = 2, 70, 130
    q, k, v = qkv(b, tq, tk, 4, 2, 16, 8, dtype=tf.float64, seed=7)
    mask = DENSE_MASKS[kind](b, tq, tk)
    full = np.broadcast_to(mask, (b, tq, tk))
    for fused in (True, False):
        y = kbm.ops.flash_attention(q, k, v, mask=mask, use_fused_kernel=fused)
        expected = np.stack(
            [
                numpy_attention(
                    q[i : i + 1], k[i : i + 1], v[i : i + 1], dense=full[i]
                )[0]
                for i in range(b)
            ]
        )
        assert_close(y, expected, 1e-7, 1e-7, what=f"fused={fused}")


@pytest.mark.parametrize("kind", sorted(DENSE_MASKS))
def test_dense_mask_kernel_vs_reference(kind):
    q, k, v = qkv(2, 65, 129, 4, 4, 32, 32, seed=8)
    kernel_vs_reference(
        kbm.ops.flash_attention,
        [q, k, v],
        TOLERANCES,
        mask=DENSE_MASKS[kind](2, 65, 129),
        causal=kind == "general",
        key_mask=tf.constant([129, 100]),
    )


def test_dense_mask_gradient_float64():
    q, k, v = qkv(2, 5, 7, 2, 1, 4, 3, dtype=tf.float64)
    mask = DENSE_MASKS["general"](2, 5, 7)

    def f(q, k, v):
        return kbm.ops.flash_attention(
            q, k, v, mask=mask, use_fused_kernel=True
        )

    theoretical, numerical = tf.test.compute_gradient(f, [q, k, v])
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


def test_dense_mask_bad_shape():
    q, k, v = qkv(2, 5, 6, 2, 2, 8, 8)
    with pytest.raises(ValueError, match="mask must have shape"):
        kbm.ops.flash_attention(q, k, v, mask=tf.ones((2, 5, 5), tf.bool))
    with pytest.raises(ValueError, match="first axis must be 1 or the batch"):
        kbm.ops.flash_attention(q, k, v, mask=tf.ones((3, 5, 6), tf.bool))


# ---------------------------------------------------------------- dropout


def test_philox_matches_known_answer():
    # Random123's known-answer test for Philox4x32-10 (counter = key = 0 and
    # counter = key = all ones).
    from keras_bigmodels.ops.attention import philox4x32_10

    def run(c, key):
        c = [tf.constant([x], tf.uint64) for x in c]
        key = [tf.constant(x, tf.uint64) for x in key]
        return [int(t.numpy()[0]) for t in philox4x32_10(c, key)]

    assert run([0] * 4, [0, 0]) == [
        0x6627E8D5,
        0xE169C58D,
        0xBC57AC4C,
        0x9B00DBD8,
    ]
    ones = 0xFFFFFFFF
    assert run([ones] * 4, [ones] * 2) == [
        0x408F276D,
        0x41C83B0E,
        0xA20BC7C6,
        0x6D5451FD,
    ]


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 64, 129)])
def test_dropout_mask_kernel_equals_reference(shape):
    seed = tf.constant([123456789012, -5], tf.int64)
    a = kbm.ops.attention_dropout_mask(seed, shape, 0.1, use_fused_kernel=True)
    b = kbm.ops.attention_dropout_mask(seed, shape, 0.1, use_fused_kernel=False)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.shape == shape
    assert 0.05 < 1 - a.numpy().mean() < 0.16
    other = kbm.ops.attention_dropout_mask(
        seed + 1, shape, 0.1, use_fused_kernel=True
    )
    assert not np.array_equal(a.numpy(), other.numpy())


def seeded_attention(seed):
    """flash_attention with a fixed dropout seed (kernel_vs_reference takes
    its own `seed` argument)."""

    def fn(q, k, v, **kwargs):
        return kbm.ops.flash_attention(q, k, v, seed=seed, **kwargs)

    return fn


def _dropout_numpy(q, k, v, keep, rate, **kw):
    """numpy_attention with the probabilities dropped by `keep`."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    hq, hkv = q.shape[2], k.shape[2]
    kr = np.repeat(k, hq // hkv, 2)
    vr = np.repeat(v, hq // hkv, 2)
    out = np.zeros(q.shape[:3] + (v.shape[-1],))
    for h in range(hq):
        # Probabilities of head h via attention on a one-hot value.
        eye = np.eye(k.shape[1])[None, :, None, :].repeat(q.shape[0], 0)
        p = numpy_attention(q[:, :, h : h + 1], kr[:, :, h : h + 1], eye, **kw)
        p = p[:, :, 0] * keep[:, h] / (1 - rate)
        out[:, :, h] = np.einsum("bqk,bkd->bqd", p, vr[:, :, h])
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_dropout_matches_numpy_with_the_read_out_mask(fused):
    b, tq, tk, hq, hkv = 2, 67, 70, 4, 2
    q, k, v = qkv(b, tq, tk, hq, hkv, 16, 8, dtype=tf.float64, seed=11)
    seed = tf.constant([42, 7], tf.int64)
    rate = 0.3
    key_mask = np.arange(tk) < np.array([tk, 50])[:, None]
    keep = kbm.ops.attention_dropout_mask(seed, (b, hq, tq, tk), rate).numpy()
    y = kbm.ops.flash_attention(
        q,
        k,
        v,
        causal=True,
        key_mask=key_mask,
        dropout_rate=rate,
        seed=seed,
        use_fused_kernel=fused,
    )
    expected = _dropout_numpy(
        q, k, v, keep, rate, causal=True, key_mask=key_mask
    )
    assert_close(y, expected, 1e-7, 1e-7)


@pytest.mark.parametrize("mask_kind", [None, "general"])
@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float64])
def test_dropout_kernel_vs_reference(mask_kind, dtype):
    q, k, v = qkv(2, 65, 130, 4, 2, 32, 32, dtype=dtype, seed=12)
    mask = DENSE_MASKS[mask_kind](2, 65, 130) if mask_kind else None
    kernel_vs_reference(
        seeded_attention([3, 4]),
        [q, k, v],
        TOLERANCES,
        mask=mask,
        dropout_rate=0.1,
    )


def test_dropout_gradient_float64():
    q, k, v = qkv(1, 9, 11, 2, 1, 4, 3, dtype=tf.float64)
    seed = tf.constant([5, 6], tf.int64)

    def f(q, k, v):
        return kbm.ops.flash_attention(
            q,
            k,
            v,
            causal=True,
            dropout_rate=0.25,
            seed=seed,
            use_fused_kernel=True,
        )

    theoretical, numerical = tf.test.compute_gradient(f, [q, k, v])
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


def test_dropout_is_reproducible_and_seeded():
    q, k, v = qkv(2, 20, 20, 2, 2, 8, 8)

    def run(seed):
        return kbm.ops.flash_attention(
            q, k, v, dropout_rate=0.5, seed=seed, use_fused_kernel=True
        ).numpy()

    np.testing.assert_array_equal(run([1, 2]), run([1, 2]))
    assert not np.allclose(run([1, 2]), run([1, 3]))
    with pytest.raises(ValueError, match="seed .* must be given"):
        kbm.ops.flash_attention(q, k, v, dropout_rate=0.1)
    with pytest.raises(ValueError, match="dropout_rate must be"):
        kbm.ops.flash_attention(q, k, v, dropout_rate=1.0, seed=[1, 2])


def test_dropout_in_avx_baseline_variant():
    out = run_python(
        """
        import numpy as np
        import tensorflow as tf
        import keras_bigmodels as kbm
        from keras_bigmodels.ops.attention import TOLERANCES
        from keras_bigmodels.testing import kernel_vs_reference, random_tensor
        assert "active_isa=avx;" in kbm.ops.kernels_available().info
        q = random_tensor((2, 70, 4, 48), tf.float32, 0)
        k = random_tensor((2, 90, 2, 48), tf.float32, 1)
        v = random_tensor((2, 90, 2, 48), tf.float32, 2)
        def fn(q, k, v, **kw):
            return kbm.ops.flash_attention(q, k, v, seed=[9, 10], **kw)
        kernel_vs_reference(fn, [q, k, v], TOLERANCES, dropout_rate=0.2,
                            causal=True)
        print("ok")
        """,
        env={"KERAS_BIGMODELS_ISA": "avx"},
        reuse="avx_baseline",  # One process for all baseline checks.
    )
    assert out.strip().endswith("ok")
