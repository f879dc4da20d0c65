"""Softmax-KL GPU kernels against their reference, on a GPU.

Skipped where TensorFlow sees no GPU. Checks that a GPU kernel is registered
for every op and dtype, runs the public op with the fused kernel on the GPU
(values and gradients vs the reference, temperatures, masked classes, a
frozen teacher) and the raw ops on bad input.
"""

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
)

if not tf.config.list_physical_devices("GPU"):
    pytest.skip("TensorFlow sees no GPU", allow_module_level=True)

DTYPES = [tf.float16, tf.bfloat16, tf.float32]
SHAPES = [(1, 1), (7, 7), (37, 127), (129, 128), (3, 1023), (2, 65536)]


def gpu_kernel_types(op):
    """The T values with a registered GPU kernel of `op`."""
    from tensorflow.python.framework import kernels

    types = set()
    for k in kernels.get_registered_kernels_for_op(op).kernel:
        if k.device_type == "GPU":
            for c in k.constraint:
                if c.name == "T":
                    types.update(c.allowed_values.list.type)
    return types


def test_gpu_kernels_registered():
    _loader.library()
    for op in ("Kbm>SoftmaxKLDivergence", "Kbm>SoftmaxKLDivergenceGrad"):
        types = gpu_kernel_types(op)
        for dtype in DTYPES:
            assert dtype.as_datatype_enum in types, (op, dtype.name)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_softmax_kl_gpu_vs_reference(shape, dtype, temperature):
    with tf.device("/GPU:0"):
        t = random_tensor(shape, dtype, seed=shape[1], scale=3)
        s = random_tensor(shape, dtype, seed=7, scale=3)
        kernel_vs_reference(
            kbm.ops.softmax_kl_divergence,
            [t, s],
            TOLERANCES,
            temperature=temperature,
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_masked_classes_and_frozen_teacher(dtype):
    tol = TOLERANCES[dtype]
    with tf.device("/GPU:0"):
        t = random_tensor((9, 130), tf.float32, seed=1, scale=3).numpy()
        t[:, ::3] = -np.inf
        t = tf.constant(t, dtype)
        s = random_tensor((9, 130), dtype, seed=2, scale=3)
        results = {}
        for fused in (True, False):
            with tf.GradientTape() as tape:
                tape.watch(s)
                loss = kbm.ops.softmax_kl_divergence(
                    t,
                    s,
                    temperature=2.0,
                    teacher_gradient=False,
                    use_fused_kernel=fused,
                )
            results[fused] = (loss, tape.gradient(loss, s))
        assert_close(results[True][0], results[False][0], what="loss", **tol)
        assert_close(results[True][1], results[False][1], what="ds", **tol)


def test_raw_ops_reject_bad_input_on_gpu():
    lib = _loader.library()
    x = np.zeros((4, 8), np.float32)
    with tf.device("/GPU:0"):
        with pytest.raises(tf.errors.InvalidArgumentError, match="student"):
            lib.kbm_softmax_kl_divergence(x, x[:, :7])
        with pytest.raises(tf.errors.InvalidArgumentError, match="temperature"):
            lib.kbm_softmax_kl_divergence(x, x, temperature=0.0)
