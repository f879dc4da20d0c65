"""First-use self-checks of the fused kernels on a device, per op family.

Each check runs the public ops of one family with `use_fused_kernel=True` on
tiny float32 inputs, eagerly, on the given device, and compares the outputs
and gradients (the updated variables, for the optimizers) with the
pure-TensorFlow references. The loader runs them once per GPU and family
before the first op of that family may use a GPU kernel; a check that raises
(a CUDA error: driver too old, no kernel image for the GPU's architecture, a
failed launch) or disagrees with the reference keeps that family on its
reference on that device.
"""

import numpy as np
import tensorflow as tf

FAMILIES = (
    "normalization",
    "bias_activation",
    "distillation",
    "attention",
    "optimizers",
)
# Families with CPU kernels only: on a GPU their ops run the reference (the
# loader warns once), so they have no self-check.
CPU_ONLY_FAMILIES = ("quantization",)

# Relative tolerance of the comparisons (max |error| / max(1, |ref|)):
# float32 kernels against the float32 reference, and 16-bit kernels (the
# tensor-core attention, the vectorised normalisation) against the reference
# on the same 16-bit inputs. A wrong layout or index gives errors of order 1.
TOLERANCE = 1e-4
TOLERANCE_16BIT = 5e-2


def family_of(op_name):
    """The op family of a public op, layer or optimizer name, or None."""
    name = op_name.lower()
    if "attention" in name:
        return "attention"
    if "dropout" in name:
        return "dropout"  # kbm.ops.dropout: CPU kernels only.
    if "quantiz" in name or "weight_only" in name:
        return "quantization"
    if "norm" in name:
        return "normalization"
    if "gelu" in name or "bias_act" in name:
        return "bias_activation"
    if "kl" in name or "distill" in name:
        return "distillation"
    if any(k in name for k in ("adam", "lamb", "lion", "update", "optim")):
        return "optimizers"
    return None


def _random(rng, *shape, dtype=tf.float32):
    x = tf.constant(rng.standard_normal(shape).astype(np.float32))
    return tf.cast(x, dtype)


def _values_and_grads(fn, inputs, rng):
    """fn(*inputs) and the gradients of a fixed random projection of it."""
    inputs = [tf.identity(x) for x in inputs]
    with tf.GradientTape() as tape:
        for x in inputs:
            tape.watch(x)
        y = fn(*inputs)
        weights = tf.constant(
            rng.standard_normal(y.shape).astype(np.float32), dtype=y.dtype
        )
        loss = tf.reduce_sum(y * weights)
    return [y, *tape.gradient(loss, inputs)]


def _compare(name, got, want, tolerance=TOLERANCE):
    """A mismatch description, or None when `got` matches `want`."""
    got = np.asarray(tf.cast(got, tf.float64))
    want = np.asarray(tf.cast(want, tf.float64))
    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, expected {want.shape}"
    if not np.all(np.isfinite(got)):
        return f"{name}: non-finite values"
    err = float(np.max(np.abs(got - want), initial=0.0))
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    if err > tolerance * scale:
        return f"{name}: max |error| {err:.3g} vs the reference"
    return None


def _check_differentiable(cases):
    """cases: (name, fn(use_fused_kernel) -> f(*inputs), inputs)."""
    for name, make, inputs in cases:
        tolerance = (
            TOLERANCE if inputs[0].dtype == tf.float32 else (TOLERANCE_16BIT)
        )
        got = _values_and_grads(make(True), inputs, np.random.default_rng(1))
        want = _values_and_grads(make(False), inputs, np.random.default_rng(1))
        labels = ["output"] + [f"gradient {i}" for i in range(len(inputs))]
        for label, g, w in zip(labels, got, want):
            if g is None and w is None:
                continue
            problem = _compare(f"{name} {label}", g, w, tolerance)
            if problem:
                return problem
    return None


def _normalization(rng):
    from keras_bigmodels.ops import normalization as norm

    x, g, b = _random(rng, 3, 37), _random(rng, 37), _random(rng, 37)
    # bfloat16 rows of 64: the 16-byte vector path (parameters stay float32).
    x16, g64, b64 = (
        _random(rng, 5, 64, dtype=tf.bfloat16),
        _random(rng, 64),
        _random(rng, 64),
    )
    return _check_differentiable(
        [
            (
                "layer_norm(bfloat16)",
                lambda fused: (
                    lambda x, g, b: norm.layer_norm(
                        x, g, b, use_fused_kernel=fused
                    )
                ),
                [x16, g64, b64],
            ),
            (
                "layer_norm",
                lambda fused: (
                    lambda x, g, b: norm.layer_norm(
                        x, g, b, use_fused_kernel=fused
                    )
                ),
                [x, g, b],
            ),
            (
                "rms_norm",
                lambda fused: (
                    lambda x, g: norm.rms_norm(x, g, use_fused_kernel=fused)
                ),
                [x, g],
            ),
        ]
    )


def _bias_activation(rng):
    from keras_bigmodels.ops import bias_activation as act

    x, b = _random(rng, 3, 37), _random(rng, 37)
    return _check_differentiable(
        [
            (
                f"bias_gelu(approximate={approximate})",
                lambda fused, a=approximate: (
                    lambda x, b: act.bias_gelu(
                        x, b, approximate=a, use_fused_kernel=fused
                    )
                ),
                [x, b],
            )
            for approximate in (False, True)
        ]
    )


def _distillation(rng):
    from keras_bigmodels.ops import distillation as kd

    t, s = _random(rng, 3, 37), _random(rng, 3, 37)
    return _check_differentiable(
        [
            (
                "softmax_kl_divergence",
                lambda fused: (
                    lambda t, s: kd.softmax_kl_divergence(
                        t, s, temperature=2.0, use_fused_kernel=fused
                    )
                ),
                [t, s],
            )
        ]
    )


def _attention(rng):
    from keras_bigmodels.ops import attention as att

    cases = []
    # float32 (the SIMT kernel) and the tensor-core kernels of float16 and
    # bfloat16, over more than one key tile, GQA, both causal settings.
    for dtype, tq, tk, d in (
        (tf.float32, 5, 7, 32),
        (tf.float16, 70, 90, 64),
        (tf.bfloat16, 70, 90, 64),
    ):
        q = _random(rng, 1, tq, 4, d, dtype=dtype)
        k = _random(rng, 1, tk, 2, d, dtype=dtype)
        v = _random(rng, 1, tk, 2, d, dtype=dtype)
        cases += [
            (
                f"flash_attention({dtype.name}, causal={causal})",
                lambda fused, c=causal: (
                    lambda q, k, v: att.flash_attention(
                        q, k, v, causal=c, use_fused_kernel=fused
                    )
                ),
                [q, k, v],
            )
            for causal in (False, True)
        ]
    return _check_differentiable(cases)


def _optimizers(rng):
    from keras_bigmodels.ops import optimizers as opt

    sizes = [(5,), (3, 7)]
    params = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    grads = [
        tf.constant(rng.standard_normal(s).astype(np.float32)) for s in sizes
    ]
    slots = [np.abs(rng.standard_normal(s)).astype(np.float32) for s in sizes]
    decays = [1e-3, 0.0]
    updates = {
        "adam_update": lambda v, m, s, fused: opt.adam_update(
            v, m, s, grads,
            one_minus_beta_1=0.1, one_minus_beta_2=0.001,
            coef_adaptive=0.01, bias_2=1.0, coef_sgd=0.0, epsilon=1e-7,
            decays=decays, use_fused_kernel=fused,
        ),
        "lamb_update": lambda v, m, s, fused: opt.lamb_update(
            v, m, s, grads,
            learning_rate=0.01, one_minus_beta_1=0.1, one_minus_beta_2=0.001,
            bias_1=0.1, bias_2=0.001, epsilon=1e-6,
            decays=decays, use_fused_kernel=fused,
        ),
        "lion_update": lambda v, m, s, fused: opt.lion_update(
            v, m, grads,
            learning_rate=0.01, beta_1=0.9, beta_2=0.99,
            decays=decays, use_fused_kernel=fused,
        ),
    }  # fmt: skip
    for name, update in updates.items():
        results = []
        for fused in (True, False):
            variables = [tf.Variable(p) for p in params]
            moments = [tf.Variable(s) for s in slots]
            seconds = [tf.Variable(s) for s in slots]
            update(variables, moments, seconds, fused)
            results.append([t.numpy() for t in variables + moments + seconds])
        for i, (got, want) in enumerate(zip(*results)):
            problem = _compare(f"{name} state {i}", got, want)
            if problem:
                return problem
    return None


_CHECKS = {
    "normalization": _normalization,
    "bias_activation": _bias_activation,
    "distillation": _distillation,
    "attention": _attention,
    "optimizers": _optimizers,
}


def run(family, device):
    """Runs `family`'s self-check on `device`: None if it passed, else why.

    Call it where TensorFlow executes eagerly (the loader uses a thread of
    its own). Errors raised by the kernels (CUDA errors included) are
    returned as text, never raised.
    """
    check = _CHECKS.get(family)
    if check is None:
        return None
    try:
        with tf.device(device):
            return check(np.random.default_rng(0))
    except Exception as e:  # noqa: BLE001 - any failure means "do not use"
        text = " ".join(str(e).split())
        if len(text) > 500:
            text = text[:500] + "..."
        return f"{type(e).__name__}: {text}"
