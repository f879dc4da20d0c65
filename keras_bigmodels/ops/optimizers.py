"""In-place, multi-tensor optimizer updates: Adam family, LAMB and Lion.

Kernels: CPU, for float16, bfloat16 (computed in float32), float32 and
float64 variables; GPU (CUDA builds), for float16, bfloat16 and float32
variables (float32 math, scalars read on the device). One op call updates
a whole list of variables and their slots through their resource handles:
each element is read and written once (LAMB: twice, around its per-variable
norms), with no temporaries, and many small variables share one call. The
reference is the same arithmetic as `keras.optimizers.AdamW` / `Lamb` /
`Lion`, written with variable assigns.

These functions are what `kbm.optimizers` call; use them directly only to
write an optimizer. Step-dependent scalars (bias corrections, the learning
rate) are computed by the caller.
"""

import tensorflow as tf

from keras_bigmodels.ops import _loader

# Kernel-vs-reference tolerances per variable dtype, after a few steps.
TOLERANCES = {
    tf.float16: {"rtol": 2e-3, "atol": 2e-3},
    tf.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
    tf.float32: {"rtol": 1e-5, "atol": 1e-6},
    tf.float64: {"rtol": 1e-12, "atol": 1e-14},
}

_KERNEL_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _tf_variable(v):
    """The tf.Variable behind a Keras 3 variable (itself otherwise)."""
    inner = getattr(v, "value", None)
    return inner if isinstance(inner, tf.Variable) else v


def _scalar(x, dtype):
    """`x` as a scalar tensor of `dtype`. A Python number is converted
    directly (tf.cast would round it to float32 first, costing float64
    variables their hyperparameters' precision)."""
    if isinstance(x, (int, float)):
        return tf.constant(x, dtype)
    return tf.cast(x, dtype)


def _scalar_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


def _select(name, variables, use_fused_kernel):
    dtypes = {v.dtype for v in variables}
    unsupported = None
    if not dtypes <= set(_KERNEL_DTYPES):
        unsupported = f"variable dtypes {sorted(d.name for d in dtypes)}"
    elif any(
        v.dtype == tf.float64 and "GPU" in (v.device or "").upper()
        for v in variables
    ):
        unsupported = "float64 variables on a GPU (no float64 GPU kernel)"
    return _loader.select(name, use_fused_kernel, (), unsupported)


def _by_dtype(*lists):
    """Groups the zipped lists by the dtype of the first one's items."""
    groups = {}
    for items in zip(*lists):
        groups.setdefault(items[0].dtype, []).append(items)
    return [list(zip(*g)) for g in groups.values()]


def _run(lib_fn, slot_lists, grads, scalars, decays):
    for group in _by_dtype(*slot_lists, grads, decays):
        *slots, g, d = group
        sdtype = _scalar_dtype(slots[0][0].dtype)
        lib_fn(
            *[[v.handle for v in s] for s in slots],
            [tf.convert_to_tensor(x, slots[0][0].dtype) for x in g],
            **{k: _scalar(x, sdtype) for k, x in scalars.items()},
            decay=tf.stack([_scalar(x, sdtype) for x in d]),
        )


_LIST_NAMES = ("variables", "momentums", "velocities")


def _check_lists(slot_lists, gradients, decays):
    """Checks the lists' lengths, and that each slot and gradient has its
    variable's dtype, naming the list and index, before either path runs
    (the kernel would otherwise fail in TensorFlow's dispatcher, naming an
    input position, and the reference would cast, or fail in a math op)."""
    variables = slot_lists[0]
    named = list(zip(_LIST_NAMES[1:], slot_lists[1:]))
    named += [("gradients", gradients), ("decays", decays)]
    for name, items in named:
        if len(items) != len(variables):
            raise ValueError(
                f"{name} must have one entry per variable "
                f"({len(variables)}). Received: {len(items)} {name}"
            )
    for i, p in enumerate(variables):
        for name, items in named[:-1]:
            item = items[i]
            if not isinstance(item, (tf.Tensor, tf.Variable)):
                continue  # Python or NumPy values: converted to p's dtype.
            if item.dtype != p.dtype:
                raise TypeError(
                    f"{name}[{i}] must have the dtype of variables[{i}] "
                    f"({p.dtype.name}). Received: {name}[{i}].dtype="
                    f"{item.dtype.name}"
                )


def _multi_apply(
    name, kernel, slot_lists, gradients, scalars, decays, reference, fused
):
    """Updates the variables (`slot_lists[0]`) and their slots in place:
    one `kernel` call per variable dtype, or `reference(*slots, g, d,
    *scalars.values())` per variable when the kernels cannot run.
    `scalars` maps the kernel's scalar input names to their values."""
    slot_lists = [[_tf_variable(v) for v in s] for s in slot_lists]
    gradients, decays = list(gradients), list(decays)
    _check_lists(slot_lists, gradients, decays)
    lib = _select(name, slot_lists[0], fused)
    if lib is None:
        for *slots, g, d in zip(*slot_lists, gradients, decays):
            reference(*slots, g, d, *scalars.values())
        return
    _run(getattr(lib, kernel), slot_lists, gradients, scalars, decays)


def adam_update(
    variables,
    momentums,
    velocities,
    gradients,
    *,
    one_minus_beta_1,
    one_minus_beta_2,
    coef_adaptive,
    bias_2,
    coef_sgd,
    epsilon,
    decays,
    use_fused_kernel="auto",
):
    """Adam-family update of many variables, in place.

    For each variable `p` with slots `m`, `v`, gradient `g` and decay `d`:
    `m += (g - m) * one_minus_beta_1`, `v += (g*g - v) * one_minus_beta_2`,
    `p -= p * d`, then `p -= m * coef_adaptive / (sqrt(v / bias_2) +
    epsilon) + m * coef_sgd`. AdamW: `coef_adaptive = lr * sqrt(1 - b2^t) /
    (1 - b1^t)`, `bias_2 = 1`, `coef_sgd = 0`. RAdam sets the coefficients
    of its rectified and un-rectified steps.

    Args:
        variables, momentums, velocities: Lists of variables (Keras or TF).
        gradients: List of dense gradients.
        one_minus_beta_1, one_minus_beta_2, coef_adaptive, bias_2, coef_sgd,
            epsilon: Scalars (Python numbers or scalar tensors).
        decays: One decoupled weight-decay factor per variable
            (`learning_rate * weight_decay`, or 0).
        use_fused_kernel: `"auto"`, `True` or `False`, as in
            `kbm.ops.layer_norm`. Defaults to `"auto"`.
    """
    scalars = dict(
        one_minus_beta_1=one_minus_beta_1,
        one_minus_beta_2=one_minus_beta_2,
        coef_adaptive=coef_adaptive,
        bias_2=bias_2,
        coef_sgd=coef_sgd,
        epsilon=epsilon,
    )
    _multi_apply(
        "adam_update",
        "kbm_multi_apply_adam",
        [variables, momentums, velocities],
        gradients,
        scalars,
        decays,
        _adam_reference,
        use_fused_kernel,
    )


def _compute(x):
    """`x` read in at least float32 (the references' compute dtype)."""
    x = tf.convert_to_tensor(x)
    return tf.cast(x, tf.float64 if x.dtype == tf.float64 else tf.float32)


def _adam_reference(p, m, v, g, d, omb1, omb2, coef_a, bias2, coef_sgd, eps):
    """One variable's Adam-family update with TF ops (Keras's arithmetic),
    computed in at least float32."""
    dt = p.dtype
    pc, mc, vc, g = _compute(p), _compute(m), _compute(v), _compute(g)
    omb1, omb2, coef_a, bias2, coef_sgd, eps, d = (
        _scalar(x, pc.dtype)
        for x in (omb1, omb2, coef_a, bias2, coef_sgd, eps, d)
    )
    mc = mc + (g - mc) * omb1
    vc = vc + (tf.square(g) - vc) * omb2
    pc = pc - pc * d
    pc = pc - ((mc * coef_a) / (tf.sqrt(vc / bias2) + eps) + mc * coef_sgd)
    for var, value in ((m, mc), (v, vc), (p, pc)):
        var.assign(tf.cast(value, dt))


def lamb_update(
    variables,
    momentums,
    velocities,
    gradients,
    *,
    learning_rate,
    one_minus_beta_1,
    one_minus_beta_2,
    bias_1,
    bias_2,
    epsilon,
    decays,
    use_fused_kernel="auto",
):
    """LAMB update of many variables, in place.

    For each variable: `m`, `v` as in `adam_update`; `p -= p * d`;
    `u = (m / bias_1) / (sqrt(v / bias_2) + epsilon)`; `r = ||p|| / ||u||`
    (1 if either norm is 0); `p -= r * learning_rate * u`. The update uses
    the new `m` and `v` before they are stored (for float16/bfloat16
    variables, before their rounding), as the norm does. With
    `epsilon=0`, an element whose new `m` and `v` are both 0 gets
    `u = 0 / 0` (NaN), on both paths.

    Args:
        variables, momentums, velocities, gradients: As in `adam_update`.
        learning_rate, one_minus_beta_1, one_minus_beta_2, bias_1, bias_2,
            epsilon: Scalars; `bias_k = 1 - beta_k ** step`.
        decays: One decoupled weight-decay factor per variable.
        use_fused_kernel: `"auto"`, `True` or `False`. Defaults to `"auto"`.
    """
    scalars = dict(
        learning_rate=learning_rate,
        one_minus_beta_1=one_minus_beta_1,
        one_minus_beta_2=one_minus_beta_2,
        bias_1=bias_1,
        bias_2=bias_2,
        epsilon=epsilon,
    )
    _multi_apply(
        "lamb_update",
        "kbm_multi_apply_lamb",
        [variables, momentums, velocities],
        gradients,
        scalars,
        decays,
        _lamb_reference,
        use_fused_kernel,
    )


def _lamb_reference(p, m, v, g, d, lr, omb1, omb2, bias1, bias2, eps):
    dt = p.dtype
    pc, mc, vc, g = _compute(p), _compute(m), _compute(v), _compute(g)
    lr, omb1, omb2, bias1, bias2, eps, d = (
        _scalar(x, pc.dtype) for x in (lr, omb1, omb2, bias1, bias2, eps, d)
    )
    mc = mc + (g - mc) * omb1
    vc = vc + (tf.square(g) - vc) * omb2
    pc = pc - pc * d
    update = (mc / bias1) / (tf.sqrt(vc / bias2) + eps)
    w_norm = tf.norm(tf.reshape(pc, [-1]))
    u_norm = tf.norm(tf.reshape(update, [-1]))
    ratio = tf.where(
        w_norm > 0, tf.where(u_norm > 0, w_norm / u_norm, 1.0), 1.0
    )
    pc = pc - ratio * lr * update
    for var, value in ((m, mc), (v, vc), (p, pc)):
        var.assign(tf.cast(value, dt))


def lion_update(
    variables,
    momentums,
    gradients,
    *,
    learning_rate,
    beta_1,
    beta_2,
    decays,
    use_fused_kernel="auto",
):
    """Lion update of many variables, in place.

    For each variable: `p -= p * d`; `p -= learning_rate * sign(m * beta_1 +
    g * (1 - beta_1))`; `m = m * beta_2 + g * (1 - beta_2)`.

    Args:
        variables, momentums, gradients: Lists, as in `adam_update`.
        learning_rate, beta_1, beta_2: Scalars.
        decays: One decoupled weight-decay factor per variable.
        use_fused_kernel: `"auto"`, `True` or `False`. Defaults to `"auto"`.
    """
    _multi_apply(
        "lion_update",
        "kbm_multi_apply_lion",
        [variables, momentums],
        gradients,
        dict(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2),
        decays,
        _lion_reference,
        use_fused_kernel,
    )


def _lion_reference(p, m, g, d, lr, b1, b2):
    dt = p.dtype
    pc, mc, g = _compute(p), _compute(m), _compute(g)
    lr, b1, b2, d = (_scalar(x, pc.dtype) for x in (lr, b1, b2, d))
    pc = pc - pc * d
    pc = pc - lr * tf.sign(mc * b1 + g * (1.0 - b1))
    mc = mc * b2 + g * (1.0 - b2)
    for var, value in ((m, mc), (p, pc)):
        var.assign(tf.cast(value, dt))


def adam_sparse_update(
    variable,
    momentum,
    velocity,
    gradient,
    *,
    one_minus_beta_1,
    one_minus_beta_2,
    coef_adaptive,
    bias_2,
    coef_sgd,
    epsilon,
    decay,
):
    """Lazy (LazyAdam-style) Adam-family update of the rows in `gradient`.

    Only the rows named by the `tf.IndexedSlices` gradient (duplicates
    summed) have their slots, weight decay and value updated; other rows and
    their moments are left as they are. Plain TensorFlow ops (gather, math,
    scatter): there is no fused kernel for this path.
    """
    p, m, v = (_tf_variable(x) for x in (variable, momentum, velocity))
    dt = p.dtype
    indices, segments = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(
        tf.cast(gradient.values, dt), segments, tf.shape(indices)[0]
    )
    omb1, omb2, coef_a, bias2, coef_sgd, eps, decay = (
        _scalar(x, dt)
        for x in (
            one_minus_beta_1,
            one_minus_beta_2,
            coef_adaptive,
            bias_2,
            coef_sgd,
            epsilon,
            decay,
        )
    )
    m_rows = tf.gather(m, indices)
    v_rows = tf.gather(v, indices)
    p_rows = tf.gather(p, indices)
    m_rows = m_rows + (values - m_rows) * omb1
    v_rows = v_rows + (tf.square(values) - v_rows) * omb2
    p_rows = p_rows - p_rows * decay
    p_rows = p_rows - (
        (m_rows * coef_a) / (tf.sqrt(v_rows / bias2) + eps) + m_rows * coef_sgd
    )
    m.scatter_update(tf.IndexedSlices(m_rows, indices))
    v.scatter_update(tf.IndexedSlices(v_rows, indices))
    p.scatter_update(tf.IndexedSlices(p_rows, indices))
