"""Flash attention's GPU kernels through TensorFlow, against float64
references (forward, lse, gradients) and against the CPU kernels (dropout
masks). Skipped where TensorFlow sees no GPU."""

import numpy as np
import pytest
import tensorflow as tf

if not tf.config.list_physical_devices("GPU"):
    pytest.skip("no GPU visible to TensorFlow", allow_module_level=True)

import keras_bigmodels  # noqa: E402,F401  (registers the gradients)
from keras_bigmodels.ops import _loader  # noqa: E402

# dtype -> (forward, backward) tolerance relative to max |reference|.
TOL = {
    tf.float32: (2e-5, 1e-4),
    tf.float16: (4e-3, 1e-2),
    tf.bfloat16: (2e-2, 4e-2),
}


def _lib():
    lib = _loader.library()
    if lib is None:
        pytest.skip("kbm op library not built")
    return lib


def _reference(q, k, v, key_mask, mask, scale, causal, top_left, keep, rate):
    """float64 attention (o, lse) with an explicit softmax."""
    q, k, v = (tf.cast(t, tf.float64) for t in (q, k, v))
    b, tq, hq = q.shape[0], q.shape[1], q.shape[2]
    tk, hkv = k.shape[1], k.shape[2]
    k = tf.repeat(k, hq // hkv, axis=2)
    v = tf.repeat(v, hq // hkv, axis=2)
    s = tf.einsum("bihd,bjhd->bhij", q, k) * scale
    vis = tf.ones((b, 1, tq, tk), tf.bool)
    if key_mask is not None:
        vis &= key_mask[:, None, None, :]
    if mask is not None:
        vis &= mask[:, None]
    if causal:
        off = 0 if top_left else tk - tq
        i = tf.range(tq)[:, None]
        j = tf.range(tk)[None, :]
        vis &= j <= i + off
    vis = tf.broadcast_to(vis, s.shape)
    row_any = tf.reduce_any(vis, axis=-1)
    m = tf.reduce_max(tf.where(vis, s, -np.inf), axis=-1)
    m = tf.stop_gradient(tf.where(row_any, m, 0.0))
    e = tf.where(vis, tf.exp(tf.where(vis, s, 0.0) - m[..., None]), 0.0)
    den = tf.reduce_sum(e, axis=-1)
    safe = tf.where(row_any, den, 1.0)
    p = e / safe[..., None]
    if rate > 0:
        p = p * tf.cast(keep, tf.float64) / (1.0 - rate)
    o = tf.einsum("bhij,bjhd->bihd", p, v)
    lse = tf.where(row_any, m + tf.math.log(safe), np.inf)
    return o, lse


def _rel_err(got, want):
    got = tf.cast(got, tf.float64).numpy()
    want = want.numpy()
    assert np.isfinite(got).all()
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-3)


CASES = [
    # dtype, B, Tq, Tk, Hq, Hkv, D, causal, top_left, masks, rate
    (tf.float16, 2, 65, 129, 12, 4, 64, True, False, "k", 0.0),
    (tf.bfloat16, 1, 257, 63, 8, 1, 128, True, True, "m", 0.0),
    (tf.float32, 2, 63, 64, 12, 12, 80, False, False, "km", 0.0),
    (tf.bfloat16, 2, 7, 65, 12, 4, 256, True, False, "", 0.0),
    (tf.float16, 1, 64, 65, 8, 1, 32, False, False, "k", 0.2),
    (tf.float32, 1, 65, 7, 12, 4, 96, True, False, "", 0.1),
]


@pytest.mark.parametrize("case", CASES)
def test_gpu_matches_reference(case):
    lib = _lib()
    dtype, b, tq, tk, hq, hkv, d, causal, top_left, masks, rate = case
    rng = np.random.default_rng(0)
    q = tf.constant(rng.standard_normal((b, tq, hq, d)), dtype)
    k = tf.constant(rng.standard_normal((b, tk, hkv, d)), dtype)
    v = tf.constant(rng.standard_normal((b, tk, hkv, d)), dtype)
    d_o = tf.constant(rng.standard_normal((b, tq, hq, d)), dtype)
    key_mask = mask = None
    if "k" in masks:
        key_mask = tf.constant(rng.random((b, tk)) > 0.3)
    if "m" in masks:
        m = rng.random((1, tq, tk)) > 0.4
        m[:, :3] = False
        mask = tf.constant(m)
    empty = tf.zeros([0], tf.bool)
    seed = tf.constant([123456789, 42], tf.int64)
    scale = float(np.float32(d**-0.5))
    attrs = dict(
        scale=scale,
        causal=causal,
        causal_top_left=top_left,
        dropout_rate=rate,
    )
    keep = None
    if rate > 0:
        with tf.device("/GPU:0"):
            keep = lib.kbm_attention_dropout_mask(
                seed, tf.constant([b, hq, tq, tk], tf.int64), rate=rate
            )
        with tf.device("/CPU:0"):
            keep_cpu = lib.kbm_attention_dropout_mask(
                seed, tf.constant([b, hq, tq, tk], tf.int64), rate=rate
            )
        np.testing.assert_array_equal(keep.numpy(), keep_cpu.numpy())
    with tf.device("/GPU:0"):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            o, lse = lib.kbm_flash_attention(
                q,
                k,
                v,
                empty if key_mask is None else key_mask,
                empty if mask is None else mask,
                seed,
                **attrs,
            )
        grads = tape.gradient(o, [q, k, v], output_gradients=d_o)
    q64, k64, v64 = (tf.cast(t, tf.float64) for t in (q, k, v))
    with tf.GradientTape() as tape:
        tape.watch([q64, k64, v64])
        ref_o, ref_lse = _reference(
            q64,
            k64,
            v64,
            key_mask,
            mask,
            scale,
            causal,
            top_left,
            keep,
            rate,
        )
    ref_grads = tape.gradient(
        ref_o, [q64, k64, v64], output_gradients=tf.cast(d_o, tf.float64)
    )
    tol_f, tol_b = TOL[dtype]
    assert _rel_err(o, ref_o) <= tol_f
    lse_np, ref_lse_np = lse.numpy(), ref_lse.numpy()
    np.testing.assert_array_equal(np.isinf(lse_np), np.isinf(ref_lse_np))
    fin = np.isfinite(ref_lse_np)
    np.testing.assert_allclose(lse_np[fin], ref_lse_np[fin], atol=2e-2)
    for got, want in zip(grads, ref_grads):
        assert _rel_err(got, want) <= tol_b


def test_gpu_and_cpu_kernels_agree_with_dropout():
    lib = _lib()
    rng = np.random.default_rng(1)
    q = tf.constant(rng.standard_normal((2, 33, 4, 64)), tf.float32)
    k = tf.constant(rng.standard_normal((2, 40, 2, 64)), tf.float32)
    v = tf.constant(rng.standard_normal((2, 40, 2, 64)), tf.float32)
    args = (
        q,
        k,
        v,
        tf.zeros([0], tf.bool),
        tf.zeros([0], tf.bool),
        tf.constant([7, 8], tf.int64),
    )
    attrs = dict(scale=0.125, causal=True, dropout_rate=0.3)
    outs = {}
    for device in ("/CPU:0", "/GPU:0"):
        with tf.device(device):
            outs[device] = lib.kbm_flash_attention(*args, **attrs)
    np.testing.assert_allclose(
        outs["/GPU:0"][0].numpy(), outs["/CPU:0"][0].numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        outs["/GPU:0"][1].numpy(), outs["/CPU:0"][1].numpy(), atol=1e-5
    )
