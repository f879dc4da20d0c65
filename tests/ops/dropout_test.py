"""kbm.ops.dropout: golden masks, kernel vs reference, gradients, errors."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.testing import random_tensor, run_python
from tests.ops import _philox

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
SIZES = [1, 3, 63, 64, 65, 127, 1000, 4097]


def numpy_keep(seed, n, rate):
    """The keep mask of flat indices [0, n), from the NumPy oracle."""
    return _philox.keep_mask(seed, np.arange(n), rate)


@pytest.mark.parametrize("fused", [True, False])
def test_golden_mask_and_scale(fused):
    x = tf.ones([2, 50], tf.float32)
    y = kbm.ops.dropout(x, 0.25, [12345, -6789], use_fused_kernel=fused)
    keep = numpy_keep([12345, -6789], 100, 0.25).reshape(2, 50)
    np.testing.assert_array_equal(y.numpy() != 0, keep)
    np.testing.assert_array_equal(y.numpy()[keep], np.float32(1 / 0.75))


def test_same_stream_as_attention_dropout():
    y = kbm.ops.dropout(tf.ones([2, 3, 5, 7]), 0.3, [7, 8])
    keep = kbm.ops.attention_dropout_mask([7, 8], [2, 3, 5, 7], 0.3)
    np.testing.assert_array_equal(y.numpy() != 0, keep.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_kernel_equals_reference(dtype, n):
    x = random_tensor((n,), dtype, n, scale=3)
    for rate, seed in ((0.1, [1, 2]), (0.5, [2**40 + 3, -1]), (0.9, [0, 0])):
        fused = kbm.ops.dropout(x, rate, seed, use_fused_kernel=True)
        ref = kbm.ops.dropout(x, rate, seed, use_fused_kernel=False)
        assert fused.dtype == dtype
        np.testing.assert_array_equal(
            tf.cast(fused, tf.float64).numpy(), tf.cast(ref, tf.float64).numpy()
        )


def test_high_rank_uint32_seed_and_block_boundaries():
    x = random_tensor((3, 5, 67), tf.float32, 0)
    seed = tf.constant([4000000000, 5], tf.uint32)
    fused = kbm.ops.dropout(x, 0.2, seed)
    ref = kbm.ops.dropout(x, 0.2, seed, use_fused_kernel=False)
    np.testing.assert_array_equal(fused.numpy(), ref.numpy())
    keep = numpy_keep([4000000000, 5], x.shape.num_elements(), 0.2)
    np.testing.assert_array_equal(fused.numpy().reshape(-1) != 0, keep)


@pytest.mark.parametrize("fused", [True, False])
def test_gradient_is_the_same_mask(fused):
    x = random_tensor((4, 33), tf.float32, 1)
    dy = random_tensor((4, 33), tf.float32, 2)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = kbm.ops.dropout(x, 0.4, [9, 10], use_fused_kernel=fused)
    dx = tape.gradient(y, x, output_gradients=dy)
    np.testing.assert_array_equal(
        dx.numpy(), kbm.ops.dropout(dy, 0.4, [9, 10]).numpy()
    )
    np.testing.assert_array_equal(dx.numpy() != 0, y.numpy() != 0)


def test_second_order_gradient():
    x = random_tensor((40,), tf.float64, 3)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = kbm.ops.dropout(x, 0.5, [1, 1])
            loss = tf.reduce_sum(y * y)
        g = inner.gradient(loss, x)  # 2 * y * mask / keep
        total = tf.reduce_sum(g)
    h = outer.gradient(total, x)
    keep = numpy_keep([1, 1], 40, 0.5)
    np.testing.assert_allclose(h.numpy(), np.where(keep, 2 * 4.0, 0.0))


def test_rate_zero_is_identity_and_keep_fraction():
    x = random_tensor((1000,), tf.float32, 4)
    np.testing.assert_array_equal(kbm.ops.dropout(x, 0.0, [1, 2]), x)
    y = kbm.ops.dropout(tf.ones([1_000_000]), 0.3, [5, 6]).numpy()
    kept = np.mean(y != 0)
    assert abs(kept - 0.7) < 5 * np.sqrt(0.21 / 1e6)
    assert abs(y.mean() - 1.0) < 0.01


def test_non_finite_values():
    x = tf.constant([np.nan, np.inf, -np.inf, 1.0] * 16, tf.float32)
    y = kbm.ops.dropout(x, 0.5, [3, 4])
    ref = kbm.ops.dropout(x, 0.5, [3, 4], use_fused_kernel=False)
    np.testing.assert_array_equal(y.numpy(), ref.numpy())
    keep = numpy_keep([3, 4], 64, 0.5)
    assert np.all(y.numpy()[~keep] == 0)
    assert np.isnan(y.numpy()[0::4][keep[0::4]]).all()


def test_empty_and_unknown_shapes():
    assert kbm.ops.dropout(tf.zeros([0, 5]), 0.5, [1, 2]).shape == (0, 5)
    fn = tf.function(
        lambda x: kbm.ops.dropout(x, 0.5, [1, 2]),
        input_signature=[tf.TensorSpec([None, None], tf.float32)],
    )
    x = random_tensor((3, 70), tf.float32, 5)
    np.testing.assert_array_equal(fn(x), kbm.ops.dropout(x, 0.5, [1, 2]))


@pytest.mark.parametrize("isa", ["avx", "avx2"])
def test_avx_baseline_and_avx2_variants_equal_the_reference(isa):
    out = run_python(
        f"""
        import numpy as np
        import tensorflow as tf
        import keras_bigmodels as kbm
        from keras_bigmodels.testing import random_tensor
        assert "active_isa={isa};" in kbm.ops.kernels_available().info
        for n in (1, 63, 64, 65, 1000, 4097):
            for dtype in (tf.float32, tf.bfloat16, tf.float64):
                x = random_tensor((n,), dtype, n)
                a = kbm.ops.dropout(x, 0.3, [n, 7])
                b = kbm.ops.dropout(x, 0.3, [n, 7], use_fused_kernel=False)
                np.testing.assert_array_equal(
                    tf.cast(a, tf.float64).numpy(),
                    tf.cast(b, tf.float64).numpy())
        print("ok")
        """,
        env={"KERAS_BIGMODELS_ISA": isa},
    )
    assert out.strip().endswith("ok")


@pytest.mark.parametrize("fused", [True, False])
def test_bad_inputs_raise_clear_errors(fused):
    x = tf.ones([4, 4])
    for rate in (-0.1, 1.0, 1 - 1e-9, 1.5, float("nan"), "0.1", True, None):
        with pytest.raises(ValueError, match="rate"):
            kbm.ops.dropout(x, rate, [1, 2], use_fused_kernel=fused)
    with pytest.raises(ValueError, match=r"seed must have shape \[2\]"):
        kbm.ops.dropout(x, 0.1, [1, 2, 3], use_fused_kernel=fused)
    with pytest.raises(TypeError, match="seed must be an integer"):
        kbm.ops.dropout(x, 0.1, [1.0, 2.0], use_fused_kernel=fused)
    with pytest.raises((TypeError, ValueError), match="x"):
        kbm.ops.dropout(tf.ones([4], tf.int32), 0.1, [1, 2])


def test_kernel_checks_its_inputs_directly():
    lib = kbm.ops._loader.library()
    bad_seed = tf.constant([1, 2, 3], tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="seed must"):
        lib.kbm_dropout(tf.ones([4]), bad_seed, rate=0.1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="rate must"):
        lib.kbm_dropout(tf.ones([4]), tf.constant([1, 2], tf.int64), rate=1.0)
