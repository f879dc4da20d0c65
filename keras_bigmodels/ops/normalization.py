"""Normalisation over the last axis: fused LayerNorm and RMSNorm.

Kernels: CPU, for float16, bfloat16 (both computed in float32), float32 and
float64. Each forward pass reads x once and writes y plus two per-row
statistics (mean, 1/std), which the backward kernel reuses, so a training
step moves about five tensors' worth of bytes. Elsewhere (other devices, XLA
functions, a missing library) the ops run their pure-TensorFlow reference.
"""

import math
import numbers

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

# Kernel-vs-reference tolerances (outputs and gradients), per input dtype.
# Half types: both sides compute in float32 and round once, so they differ
# by about one unit in the last place of the output dtype.
TOLERANCES = {
    tf.float16: {"rtol": 2e-3, "atol": 2e-3},
    tf.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
    tf.float32: {"rtol": 2e-5, "atol": 2e-5},
    tf.float64: {"rtol": 1e-10, "atol": 1e-10},
}


def _check_epsilon(epsilon):
    """Validates epsilon; returns it rounded to float32.

    The kernels take epsilon as a float32 attribute, so both paths use the
    float32 value (1e-3 becomes 1.0000000475e-3).
    """
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, numbers.Real)
        or not math.isfinite(epsilon)
        or epsilon < 0
    ):
        raise ValueError(
            "epsilon must be a finite number >= 0. "
            f"Received: epsilon={epsilon!r}"
        )
    return float(np.float32(epsilon))


def _prepare(x, params):
    """Checks x and the [C] parameters; returns them as tensors."""
    x = float_tensor(x, "x")
    check_rank_at_least_1(x, "x", "normalisation is over its last axis")
    if x.shape.rank is not None and x.shape[-1] == 0:
        raise ValueError(
            "x must have a non-empty last axis to normalise over. "
            f"Received: x.shape={tuple(x.shape)}"
        )
    u = compute_dtype(x.dtype)
    params = [
        last_axis_vector(p, x, name, "x", u, fill=fill)
        for name, p, fill in params
    ]
    return x, params


def _reference_checks(x, named_params):
    checks = []
    for name, p in named_params:
        checks += assert_last_axis_matches(p, x, name, "x")
    if x.shape.rank is None or x.shape[-1] is None:
        checks.append(
            tf.debugging.assert_positive(
                tf.shape(x)[-1],
                message="x must have a non-empty last axis to normalise over",
            )
        )
    return checks


def layer_norm(x, gamma=None, beta=None, epsilon=1e-3, use_fused_kernel="auto"):
    """Layer normalisation over the last axis, with a fused kernel.

    Computes `(x - mean) / sqrt(var + epsilon) * gamma + beta`, with the mean
    and (biased) variance of each row along the last axis, in float32 for
    float16/bfloat16 inputs and in float64 for float64 inputs.

    Kernels exist on CPU for float16, bfloat16, float32 and float64, with a
    fused gradient (dx, dgamma, dbeta in one pass). With
    `use_fused_kernel="auto"`, other cases (other devices, inside
    `jit_compile=True`, library not built) run the reference below, with one
    warning saying why.

    Args:
        x: Tensor of shape `[..., C]`, floating point.
        gamma: Scale of shape `[C]`, or None for ones. Defaults to `None`.
        beta: Offset of shape `[C]`, or None for zeros. Defaults to `None`.
        epsilon: Added to the variance, >= 0. Defaults to `1e-3` (Keras's
            default). With `epsilon=0` a constant row (variance exactly 0)
            is 0/0 and gives NaN, on both paths.
        use_fused_kernel: `"auto"` uses the kernel when it can and otherwise
            falls back with one warning; `True` raises a `ValueError` listing
            why the kernel cannot be used; `False` always uses the reference.
            Defaults to `"auto"`.

    Returns:
        A tensor shaped and typed like `x`.

    Example:

    ```python
    y = kbm.ops.layer_norm(x, gamma, beta, epsilon=1e-5)
    ```

    Reference:
    - [Ba et al., 2016](https://arxiv.org/abs/1607.06450)
    """
    epsilon = _check_epsilon(epsilon)
    with tf.name_scope("layer_norm"):
        x, (gamma, beta) = _prepare(
            x, [("gamma", gamma, 1.0), ("beta", beta, 0.0)]
        )
        lib = _loader.select("layer_norm", use_fused_kernel, (x,))
        if lib is None:
            return _layer_norm_reference(x, gamma, beta, epsilon)
        y, _, _ = lib.kbm_fused_layer_norm(x, gamma, beta, epsilon=epsilon)
        return y


def rms_norm(x, gamma=None, epsilon=1e-6, use_fused_kernel="auto"):
    """RMS normalisation over the last axis, with a fused kernel.

    Computes `x / sqrt(mean(x**2) + epsilon) * gamma` along the last axis, in
    float32 for float16/bfloat16 inputs and in float64 for float64 inputs.
    Kernels and fallback as in `layer_norm`.

    Args:
        x: Tensor of shape `[..., C]`, floating point.
        gamma: Scale of shape `[C]`, or None for ones. Defaults to `None`.
        epsilon: Added to the mean square, >= 0. Defaults to `1e-6` (the
            default of `keras.layers.RMSNormalization`). With `epsilon=0` a
            row of zeros is 0/0 and gives NaN, on both paths.
        use_fused_kernel: `"auto"`, `True` or `False`, as in `layer_norm`.
            Defaults to `"auto"`.

    Returns:
        A tensor shaped and typed like `x`.

    Example:

    ```python
    y = kbm.ops.rms_norm(x, scale)
    ```

    Reference:
    - [Zhang and Sennrich, 2019](https://arxiv.org/abs/1910.07467)
    """
    epsilon = _check_epsilon(epsilon)
    with tf.name_scope("rms_norm"):
        x, (gamma,) = _prepare(x, [("gamma", gamma, 1.0)])
        lib = _loader.select("rms_norm", use_fused_kernel, (x,))
        if lib is None:
            return _rms_norm_reference(x, gamma, epsilon)
        y, _ = lib.kbm_fused_rms_norm(x, gamma, epsilon=epsilon)
        return y


def _layer_norm_reference(x, gamma, beta, epsilon):
    """LayerNorm in plain TensorFlow: the fallback and the test oracle."""
    checks = _reference_checks(x, [("gamma", gamma), ("beta", beta)])
    with tf.control_dependencies(checks):
        xu = tf.cast(x, compute_dtype(x.dtype))
    # Moments of the row shifted by its first element (as the kernels): a
    # constant row has a variance of exactly 0, so y = beta, and with
    # epsilon = 0 the documented 0/0 = NaN, rather than a rounding error of
    # the mean divided by sqrt(epsilon).
    # y does not depend on the shift: no gradient through it (its two
    # paths would cancel, n * |dy| large, in x0's gradient).
    # The mean gets one correction pass, the mean of the residuals: a long
    # float32 reduction can be off by tens of ulp (8190 copies of ~30 and
    # one 0), a percent of x - mean where that cancels, more than the
    # kernels' blocked sums.
    x0 = tf.stop_gradient(xu[..., :1])
    shifted = xu - x0
    shift = tf.reduce_mean(shifted, axis=-1, keepdims=True)
    shift += tf.reduce_mean(shifted - shift, axis=-1, keepdims=True)
    variance = tf.reduce_mean(
        tf.math.squared_difference(shifted, tf.stop_gradient(shift)),
        axis=-1,
        keepdims=True,
    )
    mean = x0 + shift
    y = (xu - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta
    return tf.cast(y, x.dtype)


def _rms_norm_reference(x, gamma, epsilon):
    """RMSNorm in plain TensorFlow: the fallback and the test oracle."""
    checks = _reference_checks(x, [("gamma", gamma)])
    with tf.control_dependencies(checks):
        xu = tf.cast(x, compute_dtype(x.dtype))
    mean_square = tf.reduce_mean(tf.square(xu), axis=-1, keepdims=True)
    y = xu * tf.math.rsqrt(mean_square + epsilon) * gamma
    return tf.cast(y, x.dtype)


@tf.RegisterGradient("Kbm>FusedLayerNorm")
def _fused_layer_norm_grad(op, dy, unused_dmean, unused_drstd):
    x, gamma, _ = op.inputs
    _, mean, rstd = op.outputs
    return _loader.library().kbm_fused_layer_norm_grad(
        dy, x, gamma, mean, rstd, epsilon=op.get_attr("epsilon")
    )


@tf.RegisterGradient("Kbm>FusedRmsNorm")
def _fused_rms_norm_grad(op, dy, unused_drstd):
    x, gamma = op.inputs
    _, rstd = op.outputs
    return _loader.library().kbm_fused_rms_norm_grad(
        dy, x, gamma, rstd, epsilon=op.get_attr("epsilon")
    )


# Second order: the gradient ops are differentiated through the reference.
@tf.RegisterGradient("Kbm>FusedLayerNormGrad")
def _fused_layer_norm_grad_grad(op, ddx, ddgamma, ddbeta):
    dy, x, gamma, _, _ = op.inputs
    epsilon = op.get_attr("epsilon")

    def backward(dy, x, gamma):
        return reference_vjp(
            lambda x, g, b: [_layer_norm_reference(x, g, b, epsilon)],
            [x, gamma, tf.zeros_like(gamma)],
            [dy],
        )

    grads = reference_vjp(backward, [dy, x, gamma], [ddx, ddgamma, ddbeta])
    return [*grads, None, None]


@tf.RegisterGradient("Kbm>FusedRmsNormGrad")
def _fused_rms_norm_grad_grad(op, ddx, ddgamma):
    dy, x, gamma, _ = op.inputs
    epsilon = op.get_attr("epsilon")

    def backward(dy, x, gamma):
        return reference_vjp(
            lambda x, g: [_rms_norm_reference(x, g, epsilon)], [x, gamma], [dy]
        )

    grads = reference_vjp(backward, [dy, x, gamma], [ddx, ddgamma])
    return [*grads, None]
