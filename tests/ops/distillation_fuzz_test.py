"""Property-based tests of the distillation KD loss (softmax KL divergence).

Properties: no crash; the kernels (loss and gradient) match the reference
within `TOLERANCES` and are non-finite only where the reference is,
including masked (-inf) teacher classes and fully masked rows;
inconsistent inputs and companion tensors (dloss, loss, lse) are rejected
with an error naming the tensor.
"""

import numpy as np
import tensorflow as tf
from hypothesis import example, given
from hypothesis import strategies as st

import keras_bigmodels as kbm
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.distillation import (
    TOLERANCES,
    _softmax_kl_reference,
)
from tests.ops import _fuzz

FAMILY = "distillation"
TEMPERATURES = st.sampled_from([1e-3, 0.1, 0.5, 1.0, 2.0, 4.0, 20.0, 1e3])


def _u(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


def _kl_tol(tol, dtype, temperature, *logits):
    """The tolerance, widened for large |logits| / T: both sides compute
    log p = t / T - lse(t / T) in float32 (float64), whose rounding error is
    about eps * max|logit| / T, relative in p and q."""
    eps = 2.3e-16 if dtype == tf.float64 else 1.2e-7
    big = max(
        [0.0]
        + [
            float(np.nanmax(np.abs(np.where(np.isfinite(x), x, 0.0))))
            for x in logits
            if np.size(x)
        ]
    )
    cond = 8 * eps * big / temperature
    # The loss is a difference of log-sums of size log(classes).
    classes = max([1] + [np.shape(x)[-1] for x in logits if np.ndim(x)])
    cond += 16 * eps * np.log(classes + 1.0)
    return {k: v + cond * (1.0 + 1.0 / temperature) for k, v in tol.items()}


def _grad_tol(tol, dloss):
    """The gradients are dloss times the per-row gradient: their rounding
    error (`_kl_tol`, for dloss = 1) grows with |dloss|."""
    d = np.abs(_fuzz.to_f64(dloss))
    big = float(np.nanmax(d)) if d.size else 1.0
    big = big if np.isfinite(big) else 1.0
    return {k: v * max(1.0, big) for k, v in tol.items()}


def _not_huge(spec):
    if spec["pattern"] == "huge":
        return {**spec, "pattern": "normal"}
    return spec


def _masked_teacher(teacher, masking, seed):
    """Teacher logits with -inf classes: none, some, or whole rows."""
    if masking == "none" or not teacher.size:
        return teacher
    rng = np.random.default_rng(seed)
    if masking == "rows":
        drop = rng.random(teacher.shape[:-1]) < 0.5
        return np.where(drop[..., None], -np.inf, teacher)
    return np.where(rng.random(teacher.shape) < 0.3, -np.inf, teacher)


# Found by fuzzing: with one class and logits / T near 1e33, the AVX2
# kernel's fused multiply-add left log q = s / T - lse off by the product's
# rounding error: dstudent inf (or 3e37) instead of 0.
@example(
    shape=(1,),
    dtype=tf.bfloat16,
    t_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    s_spec={"pattern": "huge", "seed": 0, "scale": 0.001, "specials": []},
    dl_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    masking="none",
    temperature=0.001,
    teacher_gradient=False,
)
# NaN teacher logits: the reference's gradient was 0 (NaN p treated as a
# masked class), the kernel's inf.
@example(
    shape=(1,),
    dtype=tf.float16,
    t_spec={
        "pattern": "normal",
        "seed": 0,
        "scale": 0.001,
        "specials": [(0.0, float("nan"))],
    },
    s_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    dl_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    masking="none",
    temperature=0.001,
    teacher_gradient=False,
)
# Long run: dloss ~ 30 at T = 1e-3 in float16: dteacher 17.9 for 0 (a
# near one-hot teacher), against a tolerance computed for dloss = 1.
@example(
    shape=(4, 8191),
    dtype=tf.float16,
    t_spec={"pattern": "normal", "seed": 0, "scale": 0.1, "specials": []},
    s_spec={"pattern": "normal", "seed": 0, "scale": 1.0, "specials": []},
    dl_spec={"pattern": "normal", "seed": 0, "scale": 30.0, "specials": []},
    masking="none",
    temperature=0.001,
    teacher_gradient=True,
)
# Long run: a student logit of -1e30 in float16 (-inf), T = 1e-3: the
# kernel's loss is +inf (the class's KL term), the reference's finite (the
# teacher's p there underflows to 0 in float32 and the class is dropped).
@example(
    shape=(7,),
    dtype=tf.float16,
    t_spec={"pattern": "normal", "seed": 0, "scale": 0.1, "specials": []},
    s_spec={
        "pattern": "normal",
        "seed": 0,
        "scale": 0.001,
        "specials": [(0.0, -1e30)],
    },
    dl_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    masking="none",
    temperature=0.001,
    teacher_gradient=False,
)
# Long run: 32768 near-equal logits in float32: the loss was -3.9e-5 for
# 3.2e-6 (each SIMD lane summed 4096 terms of about 1 in a row, rounding
# the same way every time); the row sums now add blocks of 512 classes.
@example(
    shape=(32768,),
    dtype=tf.float32,
    t_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    s_spec={
        "pattern": "equal",
        "seed": 2125,
        "scale": 0.1,
        "specials": [(0.0, 1e-40)],
    },
    dl_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    masking="none",
    temperature=1.0,
    teacher_gradient=False,
)
@given(
    shape=_fuzz.row_shapes(),
    dtype=_fuzz.dtypes(),
    t_spec=_fuzz.values(),
    s_spec=_fuzz.values(),
    # dloss ~ 1e30 multiplies the rounding errors of p * (log p - log q -
    # loss) past float16's range: not a meaningful comparison.
    dl_spec=_fuzz.values(allow_special=False).map(_not_huge),
    masking=st.sampled_from(["none", "none", "some", "rows"]),
    temperature=TEMPERATURES,
    teacher_gradient=st.booleans(),
)
@_fuzz.counted(FAMILY)
def test_kernels_match_reference(
    shape,
    dtype,
    t_spec,
    s_spec,
    dl_spec,
    masking,
    temperature,
    teacher_gradient,
):
    lib = _loader.library()
    u = _u(dtype)
    temperature = float(np.float32(temperature))
    teacher_np = _masked_teacher(
        _fuzz.array(t_spec, shape), masking, t_spec["seed"]
    )
    teacher = tf.constant(teacher_np, dtype)
    student = _fuzz.tensor(s_spec, shape, dtype, offset=1)
    dloss = _fuzz.tensor(dl_spec, shape[:-1], u, offset=2)
    loss, lse_t, lse_s = lib.kbm_softmax_kl_divergence(
        teacher,
        student,
        temperature=temperature,
        teacher_gradient=teacher_gradient,
        U=u,
    )
    dteacher, dstudent = lib.kbm_softmax_kl_divergence_grad(
        dloss,
        teacher,
        student,
        loss,
        lse_t,
        lse_s,
        temperature=temperature,
        teacher_gradient=teacher_gradient,
    )
    with tf.GradientTape() as tape:
        tape.watch([teacher, student])
        loss_ref = _softmax_kl_reference(teacher, student, temperature)
    dt_ref, ds_ref = tape.gradient(
        loss_ref, [teacher, student], output_gradients=dloss
    )
    tol = _kl_tol(
        TOLERANCES[dtype],
        dtype,
        temperature,
        _fuzz.to_f64(teacher),
        _fuzz.to_f64(student),
    )
    ordinary = _fuzz.is_ordinary(t_spec, s_spec)
    if not np.isfinite(_fuzz.to_f64(student)).all():
        # An injected 1e30 is inf in float16: an infinite student logit as
        # much as an injected one (`is_ordinary`). Its KL term is +inf
        # (the kernel's loss) unless the teacher's p there underflows to 0
        # (the reference, in float32, then drops the class).
        ordinary = _fuzz.NONFINITE
    assert loss.dtype == u and loss.shape == shape[:-1]
    _fuzz.check_matches(loss, loss_ref, tol, ordinary, "loss")
    g_tol = _grad_tol(tol, dloss)
    _fuzz.check_matches(dstudent, ds_ref, g_tol, ordinary, "dstudent")
    if teacher_gradient:
        _fuzz.check_matches(dteacher, dt_ref, g_tol, ordinary, "dteacher")
    else:
        assert dteacher.shape == (0,)


# Found by fuzzing: the loss was w / sum - lse_t + lse_s, whose large terms
# (max logit / T) cancelled to a rounding error: 7.6e-6 instead of 0 for one
# class at T = 1e-3.
@example(
    shape=(2, 1),
    dtype=tf.float32,
    spec={"pattern": "normal", "seed": 1, "scale": 0.1, "specials": []},
    temperature=0.001,
    teacher_gradient=False,
)
# Long run: the same in the public op, dteacher -67 for 0 (dloss ~ 30).
@example(
    shape=(2, 3, 3),
    dtype=tf.float16,
    spec={"pattern": "normal", "seed": 0, "scale": 30.0, "specials": []},
    temperature=0.001,
    teacher_gradient=True,
)
@given(
    shape=_fuzz.row_shapes(max_elements=1 << 13),
    dtype=_fuzz.dtypes(),
    spec=_fuzz.values(allow_special=False),
    temperature=TEMPERATURES,
    teacher_gradient=st.booleans(),
)
@_fuzz.counted(FAMILY)
def test_public_op_fused_matches_reference(
    shape, dtype, spec, temperature, teacher_gradient
):
    teacher = _fuzz.tensor(spec, shape, dtype)
    student = _fuzz.tensor(spec, shape, dtype, offset=1)
    dloss = _fuzz.tensor(spec, shape[:-1], _u(dtype), offset=2)
    results = []
    for fused in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([teacher, student])
            loss = kbm.ops.softmax_kl_divergence(
                teacher,
                student,
                temperature,
                teacher_gradient=teacher_gradient,
                use_fused_kernel=fused,
            )
        grads = tape.gradient(
            loss,
            [teacher, student],
            output_gradients=dloss,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        results.append((loss, *grads))
    tol = _kl_tol(
        TOLERANCES[dtype],
        dtype,
        float(np.float32(temperature)),
        _fuzz.to_f64(teacher),
        _fuzz.to_f64(student),
    )
    ordinary = _fuzz.is_ordinary(spec)
    for got, want, what in zip(*results, ["loss", "dteacher", "dstudent"]):
        if what != "loss" and spec["pattern"] == "huge":
            # Logits / T near 1e33: the gradients are differences of such
            # terms (1e49 for 0 in float64): finiteness only.
            ordinary = None
        _fuzz.check_matches(
            got,
            want,
            tol if what == "loss" else _grad_tol(tol, dloss),
            ordinary,
            what,
        )


# Found by fuzzing: the message said "input 0 of the gradient", not dloss.
@example(
    shape=(1,),
    dtype=tf.float16,
    target="dloss",
    how="drop",
    teacher_gradient=False,
)
@given(
    shape=_fuzz.row_shapes(max_elements=1 << 10),
    dtype=_fuzz.dtypes(),
    target=st.sampled_from(
        ["dloss", "student_logits", "loss", "teacher_lse", "student_lse"]
    ),
    how=st.sampled_from(_fuzz.CORRUPTIONS),
    teacher_gradient=st.booleans(),
)
@_fuzz.counted(FAMILY)
def test_gradient_kernel_rejects_inconsistent_inputs(
    shape, dtype, target, how, teacher_gradient
):
    lib = _loader.library()
    u = _u(dtype)
    teacher = tf.ones(shape, dtype)
    loss, lse_t, lse_s = lib.kbm_softmax_kl_divergence(teacher, teacher, U=u)
    inputs = {
        "dloss": tf.ones_like(loss),
        "teacher_logits": teacher,
        "student_logits": teacher,
        "loss": loss,
        "teacher_lse": lse_t,
        "student_lse": lse_s,
    }
    other = tf.float64 if inputs[target].dtype != tf.float64 else tf.float32
    inputs[target] = _fuzz.corrupt(inputs[target], how, other)
    index = list(inputs).index(target)
    _fuzz.check_rejects_corrupt(
        lambda: lib.kbm_softmax_kl_divergence_grad(
            *inputs.values(), teacher_gradient=teacher_gradient
        ),
        [target, f"input #{index}"],
        how,
    )


@given(
    shape=_fuzz.row_shapes(max_elements=1 << 10),
    how=st.sampled_from(["drop", "grow", "rank_up", "scalar", "temperature"]),
    temperature=st.sampled_from([0.0, -1.0, float("nan"), float("inf")]),
    fused=st.sampled_from([True, False, "auto"]),
    raw=st.booleans(),
)
@_fuzz.counted(FAMILY)
def test_rejects_inconsistent_inputs(shape, how, temperature, fused, raw):
    teacher = tf.ones(shape)
    student, t = teacher, 1.0
    if how == "temperature":
        t, names = temperature, ["temperature"]
    else:
        student = _fuzz.corrupt(teacher, how, tf.float32)
        names = ["student_logits", "same shape", "rank >= 1"]
    if raw:
        lib = _loader.library()
        fn = lambda: lib.kbm_softmax_kl_divergence(  # noqa: E731
            teacher, student, temperature=t
        )
    else:
        fn = lambda: kbm.ops.softmax_kl_divergence(  # noqa: E731
            teacher, student, t, use_fused_kernel=fused
        )
    _fuzz.check_rejects(fn, names)
