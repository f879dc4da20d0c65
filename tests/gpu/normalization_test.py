"""LayerNorm / RMSNorm GPU kernels against their references, on a GPU.

Skipped where TensorFlow sees no GPU. Checks that a GPU kernel is registered
for every op and dtype, then runs the public ops with the fused kernel on
the GPU (values and gradients vs the reference) and the raw ops on bad
input.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.normalization import TOLERANCES
from keras_bigmodels.testing import kernel_vs_reference, random_tensor

if not tf.config.list_physical_devices("GPU"):
    pytest.skip("TensorFlow sees no GPU", allow_module_level=True)

DTYPES = [tf.float16, tf.bfloat16, tf.float32]
SHAPES = [(1, 1), (7, 7), (37, 127), (129, 128), (3, 1023), (4, 16384)]
OPS = [
    "Kbm>FusedLayerNorm",
    "Kbm>FusedLayerNormGrad",
    "Kbm>FusedRmsNorm",
    "Kbm>FusedRmsNormGrad",
]


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
    for op in OPS:
        types = gpu_kernel_types(op)
        for dtype in DTYPES:
            assert dtype.as_datatype_enum in types, (op, dtype.name)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_norm_gpu_vs_reference(shape, dtype):
    with tf.device("/GPU:0"):
        x = random_tensor(shape, dtype, seed=shape[1], scale=2, offset=1)
        g = random_tensor(shape[-1:], tf.float32, seed=3)
        b = random_tensor(shape[-1:], tf.float32, seed=4)
        kernel_vs_reference(kbm.ops.layer_norm, [x, g, b], TOLERANCES)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rms_norm_gpu_vs_reference(shape, dtype):
    with tf.device("/GPU:0"):
        x = random_tensor(shape, dtype, seed=shape[1], scale=2, offset=1)
        g = random_tensor(shape[-1:], tf.float32, seed=3)
        kernel_vs_reference(kbm.ops.rms_norm, [x, g], TOLERANCES)


def test_raw_ops_on_gpu_match_numpy_and_reject_bad_input():
    lib = _loader.library()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 33)).astype(np.float32)
    with tf.device("/GPU:0"):
        y, mean, rstd = lib.kbm_fused_layer_norm(
            x, np.ones(33, np.float32), np.zeros(33, np.float32), epsilon=1e-3
        )
        assert "GPU" in y.device
        want = (x - x.mean(-1, keepdims=True)) / np.sqrt(
            x.var(-1, keepdims=True) + 1e-3
        )
        np.testing.assert_allclose(y.numpy(), want, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(mean.numpy(), x.mean(-1), atol=1e-6)
        with pytest.raises(tf.errors.InvalidArgumentError, match="gamma"):
            lib.kbm_fused_layer_norm(
                x, np.ones(32, np.float32), np.zeros(33, np.float32)
            )
        with pytest.raises(tf.errors.InvalidArgumentError, match="rstd"):
            lib.kbm_fused_rms_norm_grad(
                x, x, np.ones(33, np.float32), np.ones(4, np.float32)
            )
