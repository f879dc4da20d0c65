"""Input checks and gradient helpers shared by the op families."""

import tensorflow as tf

FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def float_tensor(x, name):
    """Converts `x` to a tensor and checks it is floating point."""
    x = tf.convert_to_tensor(x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, "
            f"float32 or float64). Received: {name}.dtype={x.dtype.name}"
        )
    return x


def compute_dtype(dtype):
    """The dtype an op computes in: float64 for float64, else float32."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def check_rank_at_least_1(x, name, why):
    if x.shape.rank == 0:
        raise ValueError(
            f"{name} must have rank >= 1 ({why}). "
            f"Received: {name}.shape={tuple(x.shape)}"
        )


def last_axis_vector(p, x, name, x_name, dtype, fill=None):
    """Checks that `p` is a vector as long as the last axis of `x`.

    Args:
        p: The parameter, or None to use a vector filled with `fill`.
        x: The input tensor.
        name, x_name: The names used in error messages.
        dtype: The dtype to cast the parameter to.
        fill: The value of a missing parameter.

    Returns:
        The parameter as a tensor of `dtype`. Static shapes are checked here
        (ValueError); a dynamic mismatch is an InvalidArgumentError at run
        time, from the kernel or from an assertion on the reference path.
    """
    if p is None:
        return tf.fill(tf.shape(x)[-1:], tf.constant(fill, dtype))
    p = tf.cast(tf.convert_to_tensor(p), dtype)
    c = x.shape[-1] if x.shape.rank is not None else None
    rank_ok = p.shape.rank is None or p.shape.rank == 1
    dims_ok = not (
        rank_ok
        and p.shape.rank == 1
        and c is not None
        and p.shape[0] is not None
        and p.shape[0] != c
    )
    if not (rank_ok and dims_ok):
        raise ValueError(
            f"{name} must have shape [{c}] (the last axis of {x_name}, "
            f"whose shape is {tuple(x.shape)}). "
            f"Received: {name}.shape={tuple(p.shape)}"
        )
    return p


def assert_last_axis_matches(p, x, name, x_name):
    """Run-time check for the reference path when shapes are dynamic."""
    if p.shape.rank == 1 and p.shape[0] is not None and x.shape[-1] is not None:
        return []
    return [
        tf.debugging.assert_equal(
            tf.shape(p)[0],
            tf.shape(x)[-1],
            message=f"{name} must be as long as the last axis of {x_name}",
        )
    ]


def reference_vjp(fn, primals, cotangents):
    """Vector-Jacobian product of a reference function, by autodiff.

    Used as the gradient of the kernels' gradient ops (second order): it
    differentiates the readable reference backward pass instead.

    Args:
        fn: A function of `primals` returning a list of tensors.
        primals: The tensors to differentiate with respect to.
        cotangents: One upstream gradient per output of `fn` (None = zero).

    Returns:
        A list with one gradient per primal.
    """
    primals = list(primals)
    with tf.GradientTape() as tape:
        tape.watch(primals)
        outputs = fn(*primals)
    cotangents = [
        tf.zeros_like(o) if c is None else c
        for o, c in zip(outputs, cotangents)
    ]
    return tape.gradient(
        outputs,
        primals,
        output_gradients=cotangents,
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
