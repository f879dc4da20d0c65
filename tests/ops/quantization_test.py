"""Golden tests of the quantized matmul references (NumPy int64 oracle)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bigmodels import ops
from keras_bigmodels.ops import quantization as qm


def _np_quantize_rows(x):
    x = x.astype(np.float32)
    amax = np.abs(x).max(axis=-1)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0)
    q = np.clip(np.rint(x * inv[:, None].astype(np.float32)), -127, 127)
    return q.astype(np.int64), (amax / np.float32(127)).astype(np.float32)


@pytest.mark.parametrize("k,n", [(1, 1), (3, 5), (7, 9), (33, 17), (64, 8)])
def test_pack_unpack_round_trip(k, n):
    rng = np.random.default_rng(k * 100 + n)
    q = rng.integers(-127, 128, size=(k, n)).astype(np.int8)
    packed = ops.pack_kernel(q)
    assert packed.shape == (-(-n // 8), -(-k // 4), 8, 4)
    np.testing.assert_array_equal(ops.unpack_kernel(packed, k, n), q)
    # The documented layout: [nb, kb, j, i] = q[4 kb + i, 8 nb + j].
    p = packed.numpy()
    assert p[0, 0, 0, 0] == q[0, 0]
    if k > 1:
        assert p[0, 0, 0, 1] == q[1, 0]
    if n > 1:
        assert p[0, 0, 1, 0] == q[0, 1]


@pytest.mark.parametrize("k,n", [(2, 3), (8, 9), (30, 17)])
def test_int4_pack_unpack_round_trip(k, n):
    rng = np.random.default_rng(k + n)
    q = rng.integers(-8, 8, size=(k, n)).astype(np.int8)
    packed = ops.pack_kernel(q, bits=4)
    assert packed.shape == (-(-n // 8), -(-(k // 2) // 4), 8, 4)
    np.testing.assert_array_equal(ops.unpack_kernel(packed, k, n, bits=4), q)


def test_quantize_kernel_per_channel_and_groups():
    w = np.array([[1.0, -0.5, 0.0], [-2.0, 0.25, 0.0]], np.float32)
    q, s = ops.quantize_kernel(w)
    np.testing.assert_allclose(s, [2 / 127, 0.5 / 127, 1.0], rtol=1e-7)
    np.testing.assert_array_equal(q, [[64, -127, 0], [-127, 64, 0]])
    w = np.arange(8, dtype=np.float32).reshape(4, 2) - 3.5
    q, s = ops.quantize_kernel(w, bits=4, group_size=2)
    assert s.shape == (2, 2)
    np.testing.assert_allclose(s[0], [3.5 / 7, 2.5 / 7], rtol=1e-6)
    assert np.abs(q.numpy()).max() <= 7


def test_quantize_kernel_bad_inputs():
    w = np.ones((6, 4), np.float32)
    with pytest.raises(ValueError, match="group_size must divide"):
        ops.quantize_kernel(w, bits=4, group_size=4)
    with pytest.raises(ValueError, match="need a group_size"):
        ops.quantize_kernel(w, bits=4)
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        ops.quantize_kernel(w, bits=2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ops.quantize_kernel(np.full((2, 2), np.nan, np.float32))


@pytest.mark.parametrize("k", [1, 7, 3072])
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh"])
def test_w8a8_reference_matches_int64_golden(k, activation):
    rng = np.random.default_rng(k)
    n, m = 11, 5
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[1] = 0.0  # An all-zero row gives act(bias).
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    q, s = ops.quantize_kernel(w)
    y = ops.quantized_matmul(
        x, ops.pack_kernel(q), s, bias, activation, use_fused_kernel=False
    ).numpy()
    qx, sx = _np_quantize_rows(x)
    acc = qx @ q.numpy().astype(np.int64)
    z = acc.astype(np.float64) * sx[:, None] * s.numpy()[None, :] + bias
    if activation == "relu":
        z = np.maximum(z, 0)
    elif activation == "gelu":
        from scipy.special import erf

        z = 0.5 * z * (1 + erf(z / np.sqrt(2)))
    elif activation == "gelu_tanh":
        z = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
    np.testing.assert_allclose(y, z, rtol=2e-6, atol=2e-6)


def test_w8a8_worst_case_accumulation_is_exact():
    # All +-127 activations and weights at K = 3072: |sum| = 127*127*3072,
    # past float32's 2**24 integers; the reference's int part is exact.
    k, n = 3072, 8
    x = np.full((2, k), 1.0, np.float32)
    x[1, ::2] = -1.0
    w = np.full((k, n), 1.0, np.float32)
    q, s = ops.quantize_kernel(w)
    y = ops.quantized_matmul(x, ops.pack_kernel(q), s, use_fused_kernel=False)
    want = np.array([k, 0], np.float64)[:, None] * (127 * 127)
    want = want * (1 / 127) * (1 / 127)
    np.testing.assert_allclose(y, np.broadcast_to(want, (2, n)), rtol=1e-6)


def test_w8a8_non_finite_rows_give_nan():
    x = np.ones((3, 4), np.float32)
    x[0, 1] = np.nan
    x[2, 3] = np.inf
    q, s = ops.quantize_kernel(np.ones((4, 2), np.float32))
    y = ops.quantized_matmul(x, ops.pack_kernel(q), s, use_fused_kernel=False)
    y = y.numpy()
    assert np.isnan(y[0]).all() and np.isnan(y[2]).all()
    np.testing.assert_allclose(y[1], [4.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("bits,group", [(8, None), (8, 4), (4, 4), (4, 8)])
def test_weight_only_reference_matches_numpy(bits, group):
    rng = np.random.default_rng(bits)
    k, n = 16, 9
    x = rng.standard_normal((3, 2, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    q, s = ops.quantize_kernel(w, bits=bits, group_size=group)
    deq = q.numpy().astype(np.float64)
    sn = s.numpy()
    if sn.ndim == 1:
        deq = deq * sn
    else:
        deq = deq * np.repeat(sn, k // sn.shape[0], axis=0)
    y = ops.weight_only_matmul(
        x,
        ops.pack_kernel(q, bits),
        s,
        group_size=group,
        bits=bits,
        use_fused_kernel=False,
    )
    np.testing.assert_allclose(y, x @ deq, rtol=1e-5, atol=1e-5)
    # Quantization error is small against the float kernel.
    np.testing.assert_allclose(y, x @ w, atol=1.5 if bits == 4 else 0.1)


def test_output_dtype_and_half_inputs():
    x = tf.ones([2, 8], tf.bfloat16)
    q, s = ops.quantize_kernel(tf.ones([8, 3]))
    p = ops.pack_kernel(q)
    assert ops.quantized_matmul(x, p, s, use_fused_kernel=False).dtype == (
        tf.bfloat16
    )
    y = ops.quantized_matmul(
        x, p, s, output_dtype=tf.float32, use_fused_kernel=False
    )
    assert y.dtype == tf.float32


def test_straight_through_gradient_for_x_only():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((4, 8)).astype(np.float32))
    w = rng.standard_normal((8, 5)).astype(np.float32)
    q, s = ops.quantize_kernel(w)
    p = ops.pack_kernel(q)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = ops.quantized_matmul(
            x, p, s, activation="relu", use_fused_kernel=False
        )
    dx = tape.gradient(y, x)
    wd = ops.dequantize_kernel(p, s, 8)
    z = x @ wd
    want = tf.cast(z > 0, tf.float32) @ tf.transpose(wd)
    np.testing.assert_allclose(dx, want, rtol=1e-6, atol=1e-6)


def test_bad_inputs_name_the_tensor():
    q, s = ops.quantize_kernel(tf.ones([8, 3]))
    p = ops.pack_kernel(q)
    x = tf.ones([2, 8])
    with pytest.raises(ValueError, match="kernel_q's shape"):
        ops.quantized_matmul(tf.ones([2, 12]), p, s)
    with pytest.raises(ValueError, match="kernel_q must be a packed int8"):
        ops.quantized_matmul(x, q, s)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.quantized_matmul(x, p, s, bias=tf.ones([4]))
    with pytest.raises(ValueError, match="activation must be one of"):
        ops.quantized_matmul(x, p, s, activation="tanh")
    with pytest.raises(TypeError, match="x.dtype=int32"):
        ops.quantized_matmul(tf.ones([2, 8], tf.int32), p, s)
    with pytest.raises(ValueError, match="kernel_scale must be float32"):
        ops.quantized_matmul(x, p, tf.ones([3], tf.float64))
    with pytest.raises(ValueError, match="int4 weights need a group_size"):
        ops.weight_only_matmul(
            x, ops.pack_kernel(q // 32, bits=4), s, group_size=None, bits=4
        )
    with pytest.raises(ValueError, match="pass its group_size"):
        ops.weight_only_matmul(x, p, tf.ones([2, 3]))


def test_tolerance_table_covers_output_dtypes():
    for table in qm.TOLERANCES.values():
        assert set(table) == {tf.float32, tf.float16, tf.bfloat16}
