"""bias + GELU: golden values, kernel vs reference, gradients, errors."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.bias_activation import TOLERANCES
from keras_bigmodels.testing import (
    assert_close,
    kernel_vs_reference,
    random_tensor,
    run_python,
)

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
COLUMNS = [1, 7, 127, 128, 129, 1023]


def numpy_gelu(z, approximate):
    z = np.asarray(z, np.float64)
    if approximate:
        u = math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)
        return 0.5 * z * (1 + np.tanh(u))
    erf = np.vectorize(math.erf)
    return 0.5 * z * (1 + erf(z / math.sqrt(2)))


def test_reference_hand_computed():
    # gelu(0) = 0, gelu(1) = Phi(1) = 0.8413447460685429.
    y = kbm.ops.bias_gelu(
        tf.constant([[0.5, 2.0]], tf.float64),
        [-0.5, -1.0],
        use_fused_kernel=False,
    )
    np.testing.assert_allclose(
        y.numpy(), [[0.0, 0.8413447460685429]], rtol=1e-14
    )


@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("fused", [False, True])
def test_matches_numpy(approximate, dtype, fused):
    # Covers the far tails too: |z| up to ~12.
    x = random_tensor((6, 257), dtype, seed=0, scale=4.0)
    b = random_tensor((257,), dtype, seed=1)
    y = kbm.ops.bias_gelu(x, b, approximate=approximate, use_fused_kernel=fused)
    tol = (
        {"rtol": 1e-5, "atol": 2e-6}
        if dtype == tf.float32
        else {"rtol": 1e-12, "atol": 1e-12}
    )
    assert_close(y, numpy_gelu(x.numpy() + b.numpy(), approximate), **tol)


@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("columns", COLUMNS)
@pytest.mark.parametrize("rows", [1, 37])
def test_kernel_vs_reference(approximate, dtype, columns, rows):
    x = random_tensor((rows, columns), dtype, seed=columns, scale=3)
    b = random_tensor((columns,), dtype, seed=2)
    kernel_vs_reference(
        kbm.ops.bias_gelu, [x, b], TOLERANCES, approximate=approximate
    )


@pytest.mark.parametrize("approximate", [False, True])
def test_large_and_high_rank_inputs(approximate):
    # 3-D input, and an output big enough for the streaming-store path.
    x = random_tensor((2, 1100, 2048), tf.float32, seed=3, scale=3)
    b = random_tensor((2048,), tf.float32, seed=4)
    kernel_vs_reference(
        kbm.ops.bias_gelu, [x, b], TOLERANCES, approximate=approximate
    )


@pytest.mark.parametrize("approximate", [False, True])
def test_compute_gradient_float64(approximate):
    x = random_tensor((3, 13), tf.float64, seed=5, scale=2)
    b = random_tensor((13,), tf.float64, seed=6)

    def f(x, b):
        return kbm.ops.bias_gelu(
            x, b, approximate=approximate, use_fused_kernel=True
        )

    theoretical, numerical = tf.test.compute_gradient(f, [x, b])
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("approximate", [False, True])
def test_second_order_gradient_matches_reference(approximate):
    x = random_tensor((5, 9), tf.float64, seed=7, scale=2)
    b = random_tensor((9,), tf.float64, seed=8)

    def hessian_vector(fused):
        with tf.GradientTape() as outer:
            outer.watch([x, b])
            with tf.GradientTape() as inner:
                inner.watch([x, b])
                y = kbm.ops.bias_gelu(
                    x, b, approximate=approximate, use_fused_kernel=fused
                )
            gx, gb = inner.gradient(y, [x, b])
            penalty = tf.reduce_sum(gx**2) + tf.reduce_sum(gb**2)
        return outer.gradient(penalty, [x, b])

    for a, r in zip(hessian_vector(True), hessian_vector(False)):
        assert_close(a, r, 1e-10, 1e-10, what="second-order gradient")


def test_no_bias_and_unknown_shapes():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 6], tf.float32)])
    def f(x):
        return kbm.ops.bias_gelu(x, use_fused_kernel=True)

    x = random_tensor((2, 3, 6), tf.float32, seed=9)
    assert_close(f(x), numpy_gelu(x.numpy(), False), 1e-5, 2e-6)


def test_avx_baseline_variant_matches_reference():
    out = run_python(
        """
        import tensorflow as tf
        import keras_bigmodels as kbm
        from keras_bigmodels.ops.bias_activation import TOLERANCES
        from keras_bigmodels.testing import kernel_vs_reference, random_tensor
        assert "active_isa=avx;" in kbm.ops.kernels_available().info
        for c in (7, 129, 1023):
            for approximate in (False, True):
                x = random_tensor((9, c), tf.float32, seed=c, scale=3)
                b = random_tensor((c,), tf.float32, seed=1)
                kernel_vs_reference(kbm.ops.bias_gelu, [x, b], TOLERANCES,
                                    approximate=approximate)
        print("ok")
        """,
        env={"KERAS_BIGMODELS_ISA": "avx"},
        reuse="avx_baseline",  # One process for all baseline checks.
    )
    assert out.strip().endswith("ok")


def test_nan_and_inf_propagate():
    x = tf.constant([[np.nan, 1.0, np.inf, -1.0]], tf.float32)
    for fused in (True, False):
        y = kbm.ops.bias_gelu(x, use_fused_kernel=fused).numpy()
        assert np.isnan(y[0, 0])
        assert y[0, 2] == np.inf
        assert np.isfinite(y[0, [1, 3]]).all()
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = kbm.ops.bias_gelu(x, use_fused_kernel=fused)
        g = tape.gradient(z, x).numpy()
        assert np.isnan(g[0, 0]) and np.isfinite(g[0, [1, 3]]).all()


def test_empty_inputs():
    for shape in [(0, 4), (3, 0)]:
        x = tf.zeros(shape)
        b = tf.zeros(shape[-1:])
        for fused in (True, False):
            with tf.GradientTape() as tape:
                tape.watch([x, b])
                y = kbm.ops.bias_gelu(x, b, use_fused_kernel=fused)
            dx, db = tape.gradient(y, [x, b])
            assert y.shape == shape and dx.shape == shape
            np.testing.assert_array_equal(db.numpy(), np.zeros(shape[-1:]))


@pytest.mark.parametrize("fused", [True, False])
def test_bad_inputs_raise_clear_errors(fused):
    kw = {"use_fused_kernel": fused}
    with pytest.raises(ValueError, match=r"x must have rank >= 1"):
        kbm.ops.bias_gelu(tf.constant(1.0), **kw)
    with pytest.raises(
        ValueError,
        match=r"bias must have shape \[8\].*"
        r"Received: bias.shape=\(5,\)",
    ):
        kbm.ops.bias_gelu(tf.zeros((4, 8)), tf.zeros(5), **kw)
    with pytest.raises(ValueError, match=r"approximate must be True or False"):
        kbm.ops.bias_gelu(tf.zeros((4, 8)), approximate="tanh", **kw)
    with pytest.raises(TypeError, match=r"x.dtype=int64"):
        kbm.ops.bias_gelu(tf.zeros((4, 8), tf.int64), **kw)


def test_kernel_checks_its_inputs_directly():
    lib = _loader.library()
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"bias must have shape \[8\].*got \[5\]",
    ):
        lib.kbm_bias_gelu(tf.zeros((4, 8)), tf.zeros(5))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"dy must have the shape of x \[4,8\].*\[4,7\]",
    ):
        lib.kbm_bias_gelu_grad(tf.zeros((4, 7)), tf.zeros((4, 8)), tf.zeros(8))
