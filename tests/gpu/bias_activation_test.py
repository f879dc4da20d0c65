"""bias + GELU GPU kernels against their reference, on a GPU.

Skipped where TensorFlow sees no GPU. Checks that a GPU kernel is registered
for every op and dtype, runs the public op with the fused kernel on the GPU
(values and gradients vs the reference) and the raw ops on bad input.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.bias_activation import TOLERANCES
from keras_bigmodels.testing import kernel_vs_reference, random_tensor

if not tf.config.list_physical_devices("GPU"):
    pytest.skip("TensorFlow sees no GPU", allow_module_level=True)

DTYPES = [tf.float16, tf.bfloat16, tf.float32]
SHAPES = [(1, 1), (7, 7), (37, 127), (129, 128), (3, 1023), (4, 16384)]


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
    for op in ("Kbm>BiasGelu", "Kbm>BiasGeluGrad"):
        types = gpu_kernel_types(op)
        for dtype in DTYPES:
            assert dtype.as_datatype_enum in types, (op, dtype.name)


@pytest.mark.parametrize("approximate", [False, True], ids=["erf", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bias_gelu_gpu_vs_reference(shape, dtype, approximate):
    with tf.device("/GPU:0"):
        x = random_tensor(shape, dtype, seed=shape[1], scale=2)
        b = random_tensor(shape[-1:], dtype, seed=3, scale=0.5)
        kernel_vs_reference(
            kbm.ops.bias_gelu, [x, b], TOLERANCES, approximate=approximate
        )


def test_raw_ops_on_gpu_match_numpy_and_reject_bad_input():
    import math

    lib = _loader.library()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 33)).astype(np.float32)
    b = rng.standard_normal(33).astype(np.float32)
    with tf.device("/GPU:0"):
        y = lib.kbm_bias_gelu(x, b, approximate=False)
        assert "GPU" in y.device
        z = (x + b).astype(np.float64)
        want = 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=2e-6)
        with pytest.raises(tf.errors.InvalidArgumentError, match="bias"):
            lib.kbm_bias_gelu(x, b[:32])
        with pytest.raises(tf.errors.InvalidArgumentError, match="dy"):
            lib.kbm_bias_gelu_grad(x[:4], x, b)
