"""Softmax KL divergence: golden values, kernel vs reference, gradients."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.distillation import TOLERANCES
from keras_bigmodels.testing import (
    assert_close,
    kernel_vs_reference,
    random_tensor,
    run_python,
)


def numpy_kl(t, s, temperature):
    t = np.asarray(t, np.float64) / temperature
    s = np.asarray(s, np.float64) / temperature
    lp = (
        t
        - np.log(np.exp(t - t.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - t.max(-1, keepdims=True)
    )  # noqa: E501
    lq = (
        s
        - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - s.max(-1, keepdims=True)
    )  # noqa: E501
    return (np.exp(lp) * (lp - lq)).sum(-1)


def test_hand_computed():
    # p = (0.5, 0.5), q = (0.8, 0.2): KL = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2).
    t = tf.constant([[0.0, 0.0]], tf.float64)
    s = tf.constant([[np.log(4.0), 0.0]], tf.float64)
    expected = 0.5 * np.log(0.5 / 0.8) + 0.5 * np.log(0.5 / 0.2)
    for fused in (True, False):
        kl = kbm.ops.softmax_kl_divergence(t, s, use_fused_kernel=fused)
        np.testing.assert_allclose(kl.numpy(), [expected], rtol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_matches_numpy(fused, temperature):
    t = random_tensor((6, 3, 37), tf.float64, 0, scale=3)
    s = random_tensor((6, 3, 37), tf.float64, 1, scale=3)
    kl = kbm.ops.softmax_kl_divergence(
        t, s, temperature, use_fused_kernel=fused
    )
    assert_close(kl, numpy_kl(t, s, temperature), 1e-12, 1e-12)


@pytest.mark.parametrize(
    "dtype",
    [tf.float16, tf.bfloat16, tf.float32, tf.float64],
    ids=lambda d: d.name,
)
@pytest.mark.parametrize("classes", [1, 7, 129, 1000])
def test_kernel_vs_reference(dtype, classes):
    t = random_tensor((9, classes), dtype, classes, scale=4)
    s = random_tensor((9, classes), dtype, classes + 1, scale=4)
    kernel_vs_reference(
        kbm.ops.softmax_kl_divergence, [t, s], TOLERANCES, temperature=2.0
    )


def test_large_vocabulary_and_streaming_path():
    t = random_tensor((160, 32000), tf.float32, 3, scale=5)
    s = random_tensor((160, 32000), tf.float32, 4, scale=5)
    kernel_vs_reference(
        kbm.ops.softmax_kl_divergence, [t, s], TOLERANCES, temperature=3.0
    )


def test_long_near_uniform_rows_keep_float32_accuracy():
    # 2**20 classes of near-equal logits: the KL is about 5e-7, and the row
    # sums must not lose more than that (each SIMD lane summing its 65536
    # terms in a row gave a loss 7.7e-4 off).
    rng = np.random.default_rng(3)
    t = rng.normal(0.0, 1e-3, (1, 1 << 20)).astype(np.float32)
    s = np.full((1, 1 << 20), 0.1, np.float32)
    got = kbm.ops.softmax_kl_divergence(t, s, use_fused_kernel=True)
    np.testing.assert_allclose(got.numpy(), numpy_kl(t, s, 1.0), atol=2e-6)


def test_large_logits_and_masked_classes():
    inf = np.inf
    t = tf.constant([[1e4, -1e4, 0.0, -inf], [5.0, -inf, 1.0, 2.0]])
    s = tf.constant([[-1e4, 1e4, 3.0, -inf], [1.0, 0.0, -inf, 2.0]])
    for fused in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([t, s])
            kl = kbm.ops.softmax_kl_divergence(t, s, use_fused_kernel=fused)
        dt, ds = tape.gradient(kl, [t, s])
        assert np.isclose(kl.numpy()[0], 2e4)
        # Student masks a class the teacher gives mass: infinite divergence.
        assert kl.numpy()[1] == np.inf
        assert np.isfinite(ds.numpy()[0]).all()
        assert ds.numpy()[0, 3] == 0.0 and dt.numpy()[0, 3] == 0.0


def test_compute_gradient_float64():
    t = random_tensor((3, 6), tf.float64, 5)
    s = random_tensor((3, 6), tf.float64, 6)

    def f(t, s):
        return kbm.ops.softmax_kl_divergence(t, s, 2.5, use_fused_kernel=True)

    theoretical, numerical = tf.test.compute_gradient(f, [t, s])
    for a, b in zip(theoretical, numerical):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_second_order_gradient_matches_reference():
    t = random_tensor((2, 5), tf.float64, 7)
    s = random_tensor((2, 5), tf.float64, 8)

    def hessian_vector(fused):
        with tf.GradientTape() as outer:
            outer.watch([t, s])
            with tf.GradientTape() as inner:
                inner.watch([t, s])
                kl = kbm.ops.softmax_kl_divergence(
                    t, s, 1.5, use_fused_kernel=fused
                )
            gt, gs = inner.gradient(kl, [t, s])
            penalty = tf.reduce_sum(gt**2) + tf.reduce_sum(gs**2)
        return outer.gradient(penalty, [t, s])

    for a, b in zip(hessian_vector(True), hessian_vector(False)):
        assert_close(a, b, 1e-9, 1e-9)


def test_frozen_teacher_gets_no_gradient():
    t = random_tensor((4, 8), tf.float32, 9)
    s = random_tensor((4, 8), tf.float32, 10)
    with tf.GradientTape() as tape:
        tape.watch([t, s])
        kl = kbm.ops.softmax_kl_divergence(
            t, s, teacher_gradient=False, use_fused_kernel=True
        )
    dt, ds = tape.gradient(kl, [t, s])
    assert dt is None and ds is not None


def test_avx_baseline_variant_matches_reference():
    out = run_python(
        """
        import tensorflow as tf
        import keras_bigmodels as kbm
        from keras_bigmodels.ops.distillation import TOLERANCES
        from keras_bigmodels.testing import kernel_vs_reference, random_tensor
        assert "active_isa=avx;" in kbm.ops.kernels_available().info
        t = random_tensor((9, 1001), tf.float32, 0, scale=4)
        s = random_tensor((9, 1001), tf.float32, 1, scale=4)
        kernel_vs_reference(kbm.ops.softmax_kl_divergence, [t, s],
                            TOLERANCES, temperature=2.0)
        print("ok")
        """,
        env={"KERAS_BIGMODELS_ISA": "avx"},
        reuse="avx_baseline",  # One process for all baseline checks.
    )
    assert out.strip().endswith("ok")


@pytest.mark.parametrize("fused", [True, False])
def test_bad_inputs(fused):
    kw = {"use_fused_kernel": fused}
    with pytest.raises(ValueError, match="temperature=0"):
        kbm.ops.softmax_kl_divergence(tf.ones((2, 3)), tf.ones((2, 3)), 0, **kw)
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3\) and \(2, 4\)"):
        kbm.ops.softmax_kl_divergence(tf.ones((2, 3)), tf.ones((2, 4)), **kw)
    with pytest.raises(ValueError, match="rank >= 1"):
        kbm.ops.softmax_kl_divergence(tf.constant(1.0), tf.constant(1.0), **kw)


def test_kernel_checks_its_inputs_directly():
    lib = _loader.library()
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"student_logits must have the shape of "
        r"teacher_logits \[2,3\], got \[3,3\]",
    ):
        lib.kbm_softmax_kl_divergence(tf.ones((2, 3)), tf.ones((3, 3)))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="temperature must be a positive number",
    ):
        lib.kbm_softmax_kl_divergence(
            tf.ones((2, 3)), tf.ones((2, 3)), temperature=-1.0
        )
