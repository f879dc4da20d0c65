"""LayerNorm and RMSNorm: golden values, kernel vs reference, errors."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.normalization import TOLERANCES
from keras_bigmodels.testing import (
    assert_close,
    kernel_vs_reference,
    random_tensor,
    run_python,
)

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
COLUMNS = [1, 7, 127, 128, 129, 1023]


def numpy_layer_norm(x, gamma, beta, eps):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def numpy_rms_norm(x, gamma, eps):
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * gamma


# ----------------------------------------------------------- golden values


def test_layer_norm_reference_hand_computed():
    # Row [1, 2, 3, 4]: mean 2.5, variance 1.25.
    x = tf.constant([[1.0, 2.0, 3.0, 4.0]], tf.float64)
    y = kbm.ops.layer_norm(
        x,
        [1.0, 2.0, 1.0, 1.0],
        [0.0, 0.0, 0.0, 1.0],
        epsilon=0.0,
        use_fused_kernel=False,
    )
    s = np.sqrt(1.25)
    expected = [[-1.5 / s, 2 * -0.5 / s, 0.5 / s, 1.5 / s + 1.0]]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)


def test_rms_norm_reference_hand_computed():
    # Row [3, 4]: mean square 12.5.
    x = tf.constant([[3.0, 4.0]], tf.float64)
    y = kbm.ops.rms_norm(x, [1.0, 2.0], epsilon=0.0, use_fused_kernel=False)
    np.testing.assert_allclose(
        y.numpy(), [[3 / np.sqrt(12.5), 8 / np.sqrt(12.5)]], rtol=1e-12
    )


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("fused", [False, True])
def test_matches_numpy(dtype, fused):
    x = random_tensor((5, 3, 33), dtype, seed=0, scale=3.0, offset=1.0)
    g = random_tensor((33,), dtype, seed=1)
    b = random_tensor((33,), dtype, seed=2)
    # float64: epsilon is used at float32 precision (a 1e-10 relative shift).
    rtol = 1e-5 if dtype == tf.float32 else 1e-9
    y = kbm.ops.layer_norm(x, g, b, epsilon=1e-3, use_fused_kernel=fused)
    np.testing.assert_allclose(
        y.numpy(), numpy_layer_norm(x, g, b, 1e-3), rtol=rtol, atol=rtol
    )
    y = kbm.ops.rms_norm(x, g, epsilon=1e-6, use_fused_kernel=fused)
    np.testing.assert_allclose(
        y.numpy(), numpy_rms_norm(x, g, 1e-6), rtol=rtol, atol=rtol
    )


# ------------------------------------------------- kernel vs reference


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("columns", COLUMNS)
@pytest.mark.parametrize("rows", [1, 37])
def test_layer_norm_kernel_vs_reference(dtype, columns, rows):
    x = random_tensor((rows, columns), dtype, seed=columns, scale=2, offset=1)
    g = random_tensor(
        (columns,), tf.float64 if dtype == tf.float64 else tf.float32, seed=3
    )
    b = random_tensor((columns,), g.dtype, seed=4)
    kernel_vs_reference(kbm.ops.layer_norm, [x, g, b], TOLERANCES)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("columns", COLUMNS)
@pytest.mark.parametrize("rows", [1, 37])
def test_rms_norm_kernel_vs_reference(dtype, columns, rows):
    x = random_tensor((rows, columns), dtype, seed=columns, scale=2, offset=1)
    g = random_tensor(
        (columns,), tf.float64 if dtype == tf.float64 else tf.float32, seed=3
    )
    kernel_vs_reference(kbm.ops.rms_norm, [x, g], TOLERANCES)


def test_large_rows_use_streaming_path():
    # 16 MiB+ float32 outputs take the streaming-store path in the kernels.
    x = random_tensor((1100, 4096), tf.float32, seed=5)
    g = random_tensor((4096,), tf.float32, seed=6)
    b = random_tensor((4096,), tf.float32, seed=7)
    kernel_vs_reference(kbm.ops.layer_norm, [x, g, b], TOLERANCES)
    kernel_vs_reference(kbm.ops.rms_norm, [x, g], TOLERANCES)


def test_higher_rank_and_missing_params():
    x = random_tensor((2, 3, 4, 65), tf.float32, seed=8)
    for fused in (True, False):
        y = kbm.ops.layer_norm(x, None, None, use_fused_kernel=fused)
        assert y.shape == x.shape
    assert_close(
        kbm.ops.layer_norm(x, None, None, use_fused_kernel=True),
        numpy_layer_norm(x, 1.0, 0.0, 1e-3),
        1e-5,
        1e-5,
    )
    assert_close(
        kbm.ops.rms_norm(x, None, use_fused_kernel=True),
        numpy_rms_norm(x, 1.0, 1e-6),
        1e-5,
        1e-5,
    )


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_compute_gradient_float64(op):
    x = random_tensor((3, 11), tf.float64, seed=9)
    g = random_tensor((11,), tf.float64, seed=10)
    b = random_tensor((11,), tf.float64, seed=11)
    if op == "layer_norm":

        def f(x, g, b):
            return kbm.ops.layer_norm(x, g, b, use_fused_kernel=True)

        args = [x, g, b]
    else:

        def f(x, g):
            return kbm.ops.rms_norm(x, g, use_fused_kernel=True)

        args = [x, g]
    theoretical, numerical = tf.test.compute_gradient(f, args)
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_second_order_gradient_matches_reference(op):
    x = random_tensor((4, 19), tf.float64, seed=12)
    g = random_tensor((19,), tf.float64, seed=13)
    fn = getattr(kbm.ops, op)

    def hessian_vector(fused):
        with tf.GradientTape() as outer:
            outer.watch([x, g])
            with tf.GradientTape() as inner:
                inner.watch([x, g])
                y = fn(x, g, use_fused_kernel=fused)
                loss = tf.reduce_sum(y**3)
            gx, gg = inner.gradient(loss, [x, g])
            penalty = tf.reduce_sum(gx**2) + tf.reduce_sum(gg**2)
        return outer.gradient(penalty, [x, g])

    for a, b in zip(hessian_vector(True), hessian_vector(False)):
        assert_close(a, b, 1e-9, 1e-9, what="second-order gradient")


def test_in_tf_function_with_unknown_shapes():
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([None], tf.float32),
        ]
    )
    def f(x, g):
        y = kbm.ops.layer_norm(x, g, g, use_fused_kernel=True)
        z = kbm.ops.rms_norm(x, g, use_fused_kernel=True)
        return y, z

    x = random_tensor((6, 10), tf.float32, seed=14)
    g = random_tensor((10,), tf.float32, seed=15)
    y, z = f(x, g)
    assert_close(y, numpy_layer_norm(x, g, g, 1e-3), 1e-5, 1e-5)
    assert_close(z, numpy_rms_norm(x, g, 1e-6), 1e-5, 1e-5)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="gamma must have "
        r"shape \[10\].*got \[9\]",
    ):
        f(x, g[:9])


def test_avx_baseline_variant_matches_reference():
    # The library picks the AVX2/FMA variant on this CPU; force the baseline.
    out = run_python(
        """
        import tensorflow as tf
        import keras_bigmodels as kbm
        from keras_bigmodels.ops.normalization import TOLERANCES
        from keras_bigmodels.testing import kernel_vs_reference, random_tensor
        status = kbm.ops.kernels_available()
        assert "active_isa=avx;" in status.info, status
        for c in (7, 129, 1023):
            x = random_tensor((9, c), tf.float32, seed=c)
            g = random_tensor((c,), tf.float32, seed=1)
            kernel_vs_reference(kbm.ops.layer_norm, [x, g, g], TOLERANCES)
            kernel_vs_reference(kbm.ops.rms_norm, [x, g], TOLERANCES)
        print("ok")
        """,
        env={"KERAS_BIGMODELS_ISA": "avx"},
        reuse="avx_baseline",  # One process for all baseline checks.
    )
    assert out.strip().endswith("ok")


# ------------------------------------------------------------- bad inputs


def test_nan_stays_in_its_row():
    x = np.ones((3, 8), np.float32)
    x[1, 2] = np.nan
    for fused in (True, False):
        y = kbm.ops.layer_norm(
            x * np.arange(8), None, None, use_fused_kernel=fused
        ).numpy()
        assert np.isnan(y[1]).all()
        assert np.isfinite(y[[0, 2]]).all()
        z = kbm.ops.rms_norm(x, None, use_fused_kernel=fused).numpy()
        assert np.isnan(z[1]).all() and np.isfinite(z[[0, 2]]).all()


def test_empty_batch_is_fine():
    x = tf.zeros((0, 5))
    g = tf.ones((5,))
    for fused in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([x, g])
            y = kbm.ops.layer_norm(x, g, g, use_fused_kernel=fused)
        assert y.shape == (0, 5)
        dx, dg = tape.gradient(y, [x, g])
        assert dx.shape == (0, 5)
        np.testing.assert_array_equal(dg.numpy(), np.zeros(5))


@pytest.mark.parametrize("fused", [True, False])
def test_bad_inputs_raise_clear_errors(fused):
    kw = {"use_fused_kernel": fused}
    with pytest.raises(ValueError, match=r"x must have rank >= 1.*\(\)"):
        kbm.ops.layer_norm(tf.constant(1.0), None, None, **kw)
    with pytest.raises(ValueError, match=r"non-empty last axis.*\(4, 0\)"):
        kbm.ops.layer_norm(tf.zeros((4, 0)), None, None, **kw)
    with pytest.raises(
        ValueError,
        match=r"gamma must have shape \[8\].*"
        r"Received: gamma.shape=\(7,\)",
    ):
        kbm.ops.layer_norm(tf.zeros((4, 8)), tf.ones(7), None, **kw)
    with pytest.raises(ValueError, match=r"beta must have shape \[8\]"):
        kbm.ops.layer_norm(tf.zeros((4, 8)), None, tf.ones((2, 8)), **kw)
    with pytest.raises(ValueError, match=r"gamma must have shape \[8\]"):
        kbm.ops.rms_norm(tf.zeros((4, 8)), tf.ones(9), **kw)
    with pytest.raises(ValueError, match=r"epsilon must be.*-1"):
        kbm.ops.layer_norm(tf.zeros((4, 8)), None, None, epsilon=-1, **kw)
    with pytest.raises(TypeError, match=r"x.dtype=int32"):
        kbm.ops.rms_norm(tf.zeros((4, 8), tf.int32), None, **kw)


def test_kernel_checks_its_inputs_directly():
    lib = _loader.library()
    x = tf.zeros((4, 8))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"gamma must have shape \[8\].*got \[7\]",
    ):
        lib.kbm_fused_layer_norm(x, tf.ones(7), tf.ones(8))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"x must have a non-empty last axis.*\[4,0\]",
    ):
        lib.kbm_fused_rms_norm(tf.zeros((4, 0)), tf.ones(0))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"epsilon must be >= 0"
    ):
        lib.kbm_fused_rms_norm(x, tf.ones(8), epsilon=-1.0)
    y, mean, rstd = lib.kbm_fused_layer_norm(x, tf.ones(8), tf.ones(8))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"rstd must have shape \[4\].*got \[3\]",
    ):
        lib.kbm_fused_layer_norm_grad(x, x, tf.ones(8), mean, rstd[:3])
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"dy must have shape \[4,8\].*got \[4,7\]",
    ):
        lib.kbm_fused_rms_norm_grad(x[:, :7], x, tf.ones(8), rstd)
