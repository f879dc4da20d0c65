"""Elementwise epilogues: fused bias + GELU, and dropout.

Kernels: CPU, for float16, bfloat16 (both computed in float32), float32 and
float64. bias + GELU reads x once and writes y; its gradient kernel returns
dx and dbias (dbias reduced over all leading axes in the same pass) and
recomputes x + bias instead of storing it. Dropout draws its mask from a
counter-based generator (Philox4x32-10, vectorised), so its gradient is
the same op on dy: no mask is stored.
"""

import math

import numpy as np
import tensorflow as tf

from keras_bigmodels.ops import _loader
from keras_bigmodels.ops._utils import (
    assert_last_axis_matches,
    check_rank_at_least_1,
    compute_dtype,
    float_tensor,
    last_axis_vector,
    reference_vjp,
)
from keras_bigmodels.ops.attention import (
    _as_seed,
    _attention_dropout_mask_reference,
)

# Kernel-vs-reference tolerances, per input dtype. float32: the kernel's erf
# is Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7), its exp is
# polynomial; both are within a few float32 ulps of TensorFlow's.
TOLERANCES = {
    tf.float16: {"rtol": 2e-3, "atol": 2e-3},
    tf.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
    tf.float32: {"rtol": 1e-5, "atol": 2e-6},
    tf.float64: {"rtol": 1e-12, "atol": 1e-12},
}


def bias_gelu(x, bias=None, approximate=False, use_fused_kernel="auto"):
    """`gelu(x + bias)` in one fused pass, and its gradient in another.

    Exact GELU is `z * Phi(z)` with `Phi` the standard normal CDF; the tanh
    approximation is `0.5 * z * (1 + tanh(sqrt(2/pi) * (z + 0.044715 z**3)))`,
    as in `tf.nn.gelu`.

    Kernels exist on CPU for float16, bfloat16, float32 and float64; the
    gradient kernel returns dx and dbias (summed over all leading axes). With
    `use_fused_kernel="auto"`, other cases run the reference (the formulas
    above in plain TensorFlow, in float32 or float64), with one warning
    saying why.

    Args:
        x: Tensor of shape `[..., C]`, floating point.
        bias: Vector of shape `[C]`, or None for no bias. Defaults to `None`.
        approximate: Use the tanh approximation. Defaults to `False`.
        use_fused_kernel: `"auto"`, `True` or `False`, as in
            `kbm.ops.layer_norm`. Defaults to `"auto"`.

    Returns:
        A tensor shaped and typed like `x`.

    Example:

    ```python
    h = kbm.ops.bias_gelu(tf.matmul(x, kernel), bias)
    ```

    Reference:
    - [Hendrycks and Gimpel, 2016](https://arxiv.org/abs/1606.08415)
    """
    if not isinstance(approximate, bool):
        raise ValueError(
            f"approximate must be True or False. "
            f"Received: approximate={approximate!r}"
        )
    with tf.name_scope("bias_gelu"):
        x = float_tensor(x, "x")
        check_rank_at_least_1(x, "x", "the bias is added along its last axis")
        bias = last_axis_vector(bias, x, "bias", "x", x.dtype, fill=0.0)
        lib = _loader.select("bias_gelu", use_fused_kernel, (x,))
        if lib is None:
            return _bias_gelu_reference(x, bias, approximate)
        return lib.kbm_bias_gelu(x, bias, approximate=approximate)


def _bias_gelu_reference(x, bias, approximate):
    """`gelu(x + bias)` in at least float32: fallback and oracle.

    Written out rather than `tf.nn.gelu`, whose float64 form rounds its
    constants to float32 (a 4e-9 relative error at z = 1). The tanh form
    uses the identity 0.5 * (1 + tanh(u)) = sigmoid(2u), which does not
    cancel to 0 for negative z (tf.nn.gelu's gradient is 0 below z = -4.5 in
    float32, where the true value is about -4e-6).
    """
    with tf.control_dependencies(
        assert_last_axis_matches(bias, x, "bias", "x")
    ):
        z = tf.cast(x, compute_dtype(x.dtype))
    z = z + tf.cast(bias, z.dtype)
    if approximate:
        u = math.sqrt(2.0 / math.pi) * (z + 0.044715 * z * z * z)
        y = z * tf.sigmoid(2.0 * u)
    else:
        y = 0.5 * z * (1.0 + tf.math.erf(z * math.sqrt(0.5)))
    return tf.cast(y, x.dtype)


@tf.RegisterGradient("Kbm>BiasGelu")
def _bias_gelu_grad(op, dy):
    x, bias = op.inputs
    return _loader.library().kbm_bias_gelu_grad(
        dy, x, bias, approximate=op.get_attr("approximate")
    )


@tf.RegisterGradient("Kbm>BiasGeluGrad")
def _bias_gelu_grad_grad(op, ddx, ddbias):
    dy, x, bias = op.inputs
    approximate = op.get_attr("approximate")

    def backward(dy, x, bias):
        return reference_vjp(
            lambda x, b: [_bias_gelu_reference(x, b, approximate)],
            [x, bias],
            [dy],
        )

    return reference_vjp(backward, [dy, x, bias], [ddx, ddbias])


def dropout(x, rate, seed, use_fused_kernel="auto"):
    """Inverted dropout: `x / (1 - rate)` where kept, else 0.

    The mask is kbm's counter-based dropout stream (the one
    `kbm.ops.attention_dropout_mask` documents): element `f` of the
    flattened `x` is kept when draw `f % 4` of Philox4x32-10 with key
    `seed[0]` and counter `(f // 4, seed[1])` is at least `rate * 2**32`.
    The same `seed` gives the same mask on every path, so the gradient
    (the same op applied to `dy`) regenerates the mask instead of storing
    it. The kernel draws 16 Philox groups per vector (AVX2 or AVX-512),
    several times faster than `tf.random.stateless_uniform` plus a
    comparison and a select; the reference draws the same numbers with
    TensorFlow integer ops, and is slow.

    Args:
        x: Floating-point tensor of any shape.
        rate: Python float in `[0, 1)`: the probability of dropping.
        seed: Integer tensor of shape `[2]`.
        use_fused_kernel: `"auto"`, `True` or `False`, as in
            `kbm.ops.layer_norm`. Defaults to `"auto"`.

    Returns:
        A tensor shaped and typed like `x`.

    Example:

    ```python
    y = kbm.ops.dropout(x, 0.1, seed=[1234, step])
    ```
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise ValueError(
            f"rate must be a Python number in [0, 1). Received: rate={rate!r}"
        )
    if not (0.0 <= rate < 1.0 and np.float32(rate) < 1.0):
        raise ValueError(
            "rate must be in [0, 1) (and below 1 once rounded to float32). "
            f"Received: rate={rate!r}"
        )
    with tf.name_scope("dropout"):
        x = float_tensor(x, "x")
        seed = _as_seed(seed)
        if rate == 0:
            return tf.identity(x)
        lib = _loader.select("dropout", use_fused_kernel, (x,))
        if lib is None:
            return _dropout_reference(x, seed, rate)
        return lib.kbm_dropout(x, seed, rate=float(rate))


def _dropout_scale(rate, dtype):
    """1 / (1 - rate) for float32 `rate`, as the kernel multiplies by it."""
    scale = 1.0 / (1.0 - float(np.float32(rate)))
    return scale if dtype == tf.float64 else float(np.float32(scale))


def _dropout_reference(x, seed, rate):
    """The mask from the Philox stream in TF integer ops: fallback and
    oracle."""
    n = tf.size(x, out_type=tf.int64)
    shape = tf.stack([1, 1, 1, n])
    keep = _attention_dropout_mask_reference(seed, shape, rate)
    keep = tf.reshape(keep, tf.shape(x))
    z = tf.cast(x, compute_dtype(x.dtype))
    y = tf.where(keep, z * _dropout_scale(rate, z.dtype), tf.zeros_like(z))
    return tf.cast(y, x.dtype)


@tf.RegisterGradient("Kbm>Dropout")
def _dropout_grad(op, dy):
    x, seed = op.inputs
    return (
        _loader.library().kbm_dropout(dy, seed, rate=op.get_attr("rate")),
        None,
    )
