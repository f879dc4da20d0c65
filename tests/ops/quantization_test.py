"""Golden tests of the quantized matmul references (NumPy int64 oracle)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bigmodels import ops
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops import quantization as qm
from keras_bigmodels.testing import run_python


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


# ----------------------------------------------------------------------------
# Fused kernels against the references.
# ----------------------------------------------------------------------------

ACTS = [None, "relu", "gelu", "gelu_tanh"]
DTYPES = [tf.float32, tf.float16, tf.bfloat16]


def _w8a8_case(rows, k, n, dtype, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k)) * scale
    w = rng.standard_normal((k, n)).astype(np.float32)
    q, s = ops.quantize_kernel(w)
    bias = rng.standard_normal(n).astype(np.float32)
    return tf.constant(x, dtype), ops.pack_kernel(q), s, bias


def _both(fn, *args, **kwargs):
    return [fn(*args, **kwargs, use_fused_kernel=f) for f in (True, False)]


def _assert_match(got, want, table, dtype):
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = qm.TOLERANCES[table][dtype]
    got = tf.cast(got, tf.float32).numpy()
    want = tf.cast(want, tf.float32).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("k", [1, 3, 4, 7, 64, 385, 3072])
@pytest.mark.parametrize("dtype", DTYPES)
def test_w8a8_kernel_matches_reference_over_k(k, dtype):
    for rows, n in [(1, 1), (5, 13), (37, 23)]:
        x, p, s, bias = _w8a8_case(rows, k, n, dtype, seed=k + rows)
        for act in ACTS:
            for b in (None, bias):
                got, want = _both(ops.quantized_matmul, x, p, s, b, act)
                _assert_match(got, want, "int8", dtype)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 63, 64, 65, 130, 300])
def test_w8a8_kernel_matches_reference_over_rows(rows):
    x, p, s, bias = _w8a8_case(rows, 96, 150, tf.float32, seed=rows)
    x = tf.reshape(x, [rows, 1, 96])  # Leading dims are flattened.
    for act in ("relu", "gelu"):
        got, want = _both(ops.quantized_matmul, x, p, s, bias, act)
        _assert_match(got, want, "int8", tf.float32)
        got, want = _both(ops.quantized_matmul, x, p, s, bias, act, tf.float32)
        _assert_match(got, want, "int8", tf.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_w8a8_kernel_output_float32_from_half(dtype):
    x, p, s, bias = _w8a8_case(7, 40, 19, dtype, seed=3)
    got, want = _both(
        ops.quantized_matmul, x, p, s, bias, "gelu_tanh", tf.float32
    )
    assert got.dtype == tf.float32
    _assert_match(got, want, "int8", tf.float32)


def test_w8a8_kernel_zero_nan_inf_rows():
    x, p, s, bias = _w8a8_case(6, 37, 11, tf.float32, seed=5)
    x = x.numpy()
    x[0] = 0.0
    x[2, 5] = np.nan
    x[3, 0] = np.inf
    x[4, 36] = -np.inf
    for act in ACTS:
        got, want = _both(ops.quantized_matmul, x, p, s, bias, act)
        _assert_match(got, want, "int8", tf.float32)
        got = got.numpy()
        assert np.isnan(got[[2, 3, 4]]).all()
        assert np.isfinite(got[[0, 1, 5]]).all()


def test_w8a8_kernel_worst_case_accumulation_is_exact():
    # +-127 everywhere at K = 3072 (|sum| = 127 * 127 * 3072 > 2**24):
    # against a NumPy int64 golden, exactly (scales of 1/127 and 1).
    k, n = 3072, 19
    rng = np.random.default_rng(0)
    qx = rng.choice([-127, 127], size=(5, k)).astype(np.int64)
    qx[0] = 127
    qw = rng.choice([-127, 127], size=(k, n)).astype(np.int64)
    qw[:, 0] = 127
    x = tf.constant(qx.astype(np.float32))  # max |row| = 127: s_x = 1.
    s = tf.ones([n], tf.float32)
    p = ops.pack_kernel(tf.constant(qw.astype(np.int8)))
    y = ops.quantized_matmul(
        x, p, s, output_dtype=tf.float32, use_fused_kernel=True
    ).numpy()
    acc = qx @ qw
    assert acc[0, 0] == 127 * 127 * k
    np.testing.assert_array_equal(y, acc.astype(np.float32))
    lib = _loader.library()
    y2 = lib.kbm_quantized_mat_mul(
        x, p, s, tf.zeros([0]), output_dtype=tf.float32
    )
    np.testing.assert_array_equal(y2.numpy(), y)


def test_w8a8_kernel_empty_and_k0():
    _, p, s, _ = _w8a8_case(1, 8, 5, tf.float32, seed=1)
    got, want = _both(ops.quantized_matmul, tf.zeros([0, 8]), p, s)
    assert got.shape == (0, 5) and want.shape == (0, 5)
    q, s0 = ops.quantize_kernel(np.ones((0, 5), np.float32))
    bias = np.arange(5, dtype=np.float32) - 2
    got, want = _both(
        ops.quantized_matmul,
        tf.zeros([3, 0]),
        ops.pack_kernel(q),
        s0,
        bias,
        "relu",
    )
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(got, np.maximum(bias, 0)[None].repeat(3, 0))


@pytest.mark.parametrize(
    "bits,group", [(8, None), (8, 32), (8, 6), (4, 2), (4, 6), (4, 128)]
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_only_kernel_matches_reference(bits, group, dtype):
    for rows in (1, 3, 8, 9, 16, 17):
        k = 384 if group == 128 else 90  # 90 / 6 = 15 groups (odd).
        if group == 32:
            k = 96
        n = 21
        rng = np.random.default_rng(rows * 7 + bits)
        x = tf.constant(rng.standard_normal((rows, k)), dtype)
        w = rng.standard_normal((k, n)).astype(np.float32)
        q, s = ops.quantize_kernel(w, bits=bits, group_size=group)
        p = ops.pack_kernel(q, bits)
        bias = rng.standard_normal(n).astype(np.float32)
        for act in ACTS:
            got, want = _both(
                ops.weight_only_matmul, x, p, s, group, bits, bias, act
            )
            _assert_match(got, want, "weight_only", dtype)
        got, want = _both(
            ops.weight_only_matmul,
            x,
            p,
            s,
            group,
            bits,
            output_dtype=tf.float32,
        )
        _assert_match(got, want, "weight_only", tf.float32)


@pytest.mark.parametrize("k", [1, 2, 7, 64, 385])
def test_weight_only_int8_odd_k(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    q, s = ops.quantize_kernel(rng.standard_normal((k, 10)))
    got, want = _both(ops.weight_only_matmul, x, ops.pack_kernel(q), s)
    _assert_match(got, want, "weight_only", tf.float32)


def test_weight_only_int4_odd_group_count():
    rng = np.random.default_rng(1)
    k, g = 6 * 4, 8  # 3 groups, 1.5 packed blocks of 8 values.
    x = rng.standard_normal((4, k)).astype(np.float32)
    q, s = ops.quantize_kernel(rng.standard_normal((k, 9)), 4, g)
    got, want = _both(ops.weight_only_matmul, x, ops.pack_kernel(q, 4), s, g, 4)
    _assert_match(got, want, "weight_only", tf.float32)


def test_kernels_in_tf_function_and_gradient():
    x, p, s, bias = _w8a8_case(4, 16, 9, tf.float32, seed=2)

    @tf.function
    def f(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.quantized_matmul(
                x, p, s, bias, "gelu", use_fused_kernel=True
            )
        return y, tape.gradient(y, x)

    y, dx = f(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y_ref = ops.quantized_matmul(
            x, p, s, bias, "gelu", use_fused_kernel=False
        )
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, tape.gradient(y_ref, x), rtol=1e-6)


def test_raw_kernels_reject_bad_inputs():
    lib = _loader.library()
    f32 = {"output_dtype": tf.float32}
    x = tf.ones([2, 8])
    q, s = ops.quantize_kernel(tf.ones([8, 3]))
    p = ops.pack_kernel(q)
    none = tf.zeros([0])
    bad = tf.errors.InvalidArgumentError
    with pytest.raises(bad, match=r"kernel_q must have shape \[1, 3, 8, 4\]"):
        lib.kbm_quantized_mat_mul(tf.ones([2, 12]), p, s, none, **f32)
    with pytest.raises(bad, match=r"kernel_q must have shape.*got shape"):
        lib.kbm_quantized_mat_mul(x, p, tf.ones([9]), none, **f32)
    with pytest.raises(bad, match=r"bias must have shape \[3\].*\[4\]"):
        lib.kbm_quantized_mat_mul(x, p, s, tf.ones([4]), **f32)
    with pytest.raises(bad, match=r"kernel_scale must have shape \[N\]"):
        lib.kbm_quantized_mat_mul(x, p, tf.ones([2, 3]), none, **f32)
    with pytest.raises((bad, ValueError), match=r"output_dtype"):
        lib.kbm_quantized_mat_mul(
            tf.ones([2, 8], tf.float16),
            p,
            s,
            none,
            output_dtype=tf.bfloat16,
        )
    with pytest.raises((bad, ValueError), match=r"activation"):
        lib.kbm_quantized_mat_mul(x, p, s, none, activation="tanh", **f32)

    def w(*args, **kwargs):
        return lib.kbm_weight_only_mat_mul(*args, **kwargs, **f32)

    with pytest.raises(bad, match=r"group_size must divide K=8.*group_size=3"):
        w(x, p, tf.ones([2, 3]), none, group_size=3)
    with pytest.raises(bad, match=r"kernel_scale must have shape \[2, 3\]"):
        w(x, p, tf.ones([3, 3]), none, group_size=4)
    with pytest.raises(bad, match=r"bits must be 8 or 4, got 2"):
        w(x, p, s, none, bits=2)
    with pytest.raises(bad, match=r"int4 weights need an even K.*K=7"):
        w(tf.ones([2, 7]), p, tf.ones([1, 3]), none, bits=4, group_size=7)
    with pytest.raises(bad, match=r"one scale per channel.*group_size=4"):
        w(x, p, s, none, group_size=4)
    with pytest.raises(bad, match=r"int4 weights need grouped scales"):
        w(x, ops.pack_kernel(q // 32, 4), s, none, bits=4)
    with pytest.raises(bad, match=r"kernel_q must have shape \[1, 1, 8, 4\]"):
        w(x, p, tf.ones([2, 3]), none, bits=4, group_size=4)


def test_avx_baseline_variant_matches_reference():
    out = run_python(
        """
        import numpy as np
        import tensorflow as tf
        import keras_bigmodels as kbm
        from keras_bigmodels import ops
        from keras_bigmodels.ops import quantization as qm
        assert "active_isa=avx;" in kbm.ops.kernels_available().info
        rng = np.random.default_rng(0)
        for k, n, rows in ((7, 5, 3), (64, 17, 9), (385, 9, 2)):
            x = rng.standard_normal((rows, k)).astype(np.float32)
            x[0, 0] = np.nan if rows > 2 else x[0, 0]
            w = rng.standard_normal((k, n)).astype(np.float32)
            q, s = ops.quantize_kernel(w)
            p = ops.pack_kernel(q)
            for act in (None, "relu", "gelu", "gelu_tanh"):
                a, b = [ops.quantized_matmul(x, p, s, s, act,
                                             use_fused_kernel=f)
                        for f in (True, False)]
                np.testing.assert_allclose(a, b, **qm.TOLERANCES["int8"][
                    tf.float32])
            kk = k + k % 2
            x2 = rng.standard_normal((rows, kk)).astype(np.float32)
            for bits, g in ((8, None), (4, 2)):
                q, s = ops.quantize_kernel(w[:kk] if kk == k else
                                           np.vstack([w, w[:1]]), bits, g)
                p = ops.pack_kernel(q, bits)
                a, b = [ops.weight_only_matmul(x2, p, s, g, bits,
                                               use_fused_kernel=f)
                        for f in (True, False)]
                np.testing.assert_allclose(a, b, **qm.TOLERANCES[
                    "weight_only"][tf.float32])
        print("ok")
        """,
        env={"KERAS_BIGMODELS_ISA": "avx"},
        reuse="avx_baseline",
    )
    assert out.strip().endswith("ok")


@pytest.mark.parametrize("isa", ["avx", "avx2", "avx512vnni"])
def test_w8a8_exact_golden_on_each_isa_variant(isa):
    # Each compiled W8A8 micro-kernel (forced through KERAS_BIGMODELS_ISA)
    # against a NumPy int64 golden, exactly: integer rows with max |row| =
    # 127 quantize to themselves (s_x = 1) and the channel scales are 1.
    # Shapes cover +-127 at K = 3072, odd K, N not a multiple of 8 and every
    # panel/row remainder of the micro-kernels and tiles.
    out = run_python(
        f"""
        import platform
        import numpy as np
        import tensorflow as tf
        import keras_bigmodels as kbm
        from keras_bigmodels import ops
        from keras_bigmodels.ops import quantization as qm
        info = dict(kv.split("=") for kv in
                    kbm.ops.kernels_available().info.split(";"))
        if platform.machine() == "x86_64":
            assert info["compiled_isas"] == "avx,avx2,avx512vnni", info
        if info["active_isa"] != "{isa}":
            print("unsupported", info["active_isa"])
            raise SystemExit
        rng = np.random.default_rng(1)

        def check(qx, qw, act=None):
            x = tf.constant(qx.astype(np.float32))
            s = tf.ones([qw.shape[1]], tf.float32)
            p = ops.pack_kernel(tf.constant(qw.astype(np.int8)))
            y = ops.quantized_matmul(x, p, s, None, act,
                                     output_dtype=tf.float32,
                                     use_fused_kernel=True).numpy()
            if act is None:
                acc = qx.astype(np.int64) @ qw.astype(np.int64)
                np.testing.assert_array_equal(y, acc.astype(np.float32))
            else:
                want = ops.quantized_matmul(x, p, s, None, act,
                                            output_dtype=tf.float32,
                                            use_fused_kernel=False)
                np.testing.assert_allclose(
                    y, want, **qm.TOLERANCES["int8"][tf.float32])

        k = 3072
        qx = rng.choice([-127, 127], size=(11, k))
        qx[0] = 127
        qx[1] = -127
        qw = rng.choice([-127, 127], size=(k, 19))
        qw[:, 0] = 127
        qw[:, 1] = -127
        check(qx, qw)
        for k, n, rows in ((1, 1, 1), (7, 9, 3), (385, 17, 9),
                           (385, 23, 70), (130, 37, 8), (97, 150, 65),
                           (64, 50, 17), (1025, 8, 2)):
            qx = rng.integers(-127, 128, size=(rows, k))
            qx[:, 0] = 127
            qw = rng.integers(-127, 128, size=(k, n))
            check(qx, qw)
            if k == 385:
                check(qx, qw, "gelu")
        print("ok")
        """,
        env={"KERAS_BIGMODELS_ISA": isa},
        reuse=f"isa_{isa}",
    )
    if out.strip().startswith("unsupported"):
        pytest.skip(f"this CPU does not run the {isa} variant: {out.strip()}")
    assert out.strip().endswith("ok")


def test_family_is_cpu_only():
    from keras_bigmodels.ops import _gpu_probe

    assert _gpu_probe.family_of("quantized_matmul") == "quantization"
    assert _gpu_probe.family_of("weight_only_matmul") == "quantization"
    assert "quantization" in _gpu_probe.CPU_ONLY_FAMILIES
    assert "quantization" not in _gpu_probe.FAMILIES
