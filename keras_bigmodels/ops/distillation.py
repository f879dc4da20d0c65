"""Temperature-scaled softmax KL divergence for distillation, fused.

Kernels: CPU, for float16, bfloat16 (computed in float32), float32 and
float64 logits. Per row, the forward pass reads the teacher and student
logits once for their maxima and once more (from cache) for the
log-sum-exps and the divergence, with no softmax tensor in memory; the
gradient is one more pass. Stable for any logit magnitude (only
differences to the row maximum are exponentiated); a class whose teacher
logit is `-inf` (masked) contributes nothing.
"""

import math

import numpy as np
import tensorflow as tf

from keras_bigmodels.ops import _loader
from keras_bigmodels.ops._utils import (
    compute_dtype,
    float_tensor,
    reference_vjp,
)

TOLERANCES = {
    tf.float16: {"rtol": 5e-3, "atol": 5e-3},
    tf.bfloat16: {"rtol": 3e-2, "atol": 3e-2},
    tf.float32: {"rtol": 2e-5, "atol": 2e-6},
    tf.float64: {"rtol": 1e-11, "atol": 1e-12},
}


def check_temperature(temperature):
    """Raises ValueError unless `temperature` is a finite number > 0."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(
            "temperature must be a positive number. "
            f"Received: temperature={temperature!r}"
        )


def softmax_kl_divergence(
    teacher_logits,
    student_logits,
    temperature=1.0,
    teacher_gradient=True,
    use_fused_kernel="auto",
):
    """`KL(softmax(teacher / T) || softmax(student / T))` per example.

    Args:
        teacher_logits: `[..., classes]`.
        student_logits: The same shape and dtype.
        temperature: `T > 0`, used at float32 precision. Defaults to `1.0`.
        teacher_gradient: Whether gradients flow to the teacher logits
            (False skips computing them: the teacher is frozen). Defaults to
            `True`.
        use_fused_kernel: `"auto"`, `True` or `False`, as in
            `kbm.ops.layer_norm`. Defaults to `"auto"`.

    Returns:
        The divergence per row, shape `[...]`, in float32 (float64 for
        float64 logits). Not multiplied by `T**2`: `LogitsDistillation` does
        that (Hinton et al.'s gradient scaling).

    Example:

    ```python
    kl = kbm.ops.softmax_kl_divergence(teacher_logits, student_logits, 4.0)
    ```

    Reference:
    - [Hinton et al., 2015](https://arxiv.org/abs/1503.02531)
    """
    check_temperature(temperature)
    temperature = float(np.float32(temperature))
    with tf.name_scope("softmax_kl_divergence"):
        teacher = float_tensor(teacher_logits, "teacher_logits")
        student = float_tensor(student_logits, "student_logits")
        if teacher.dtype != student.dtype:
            raise TypeError(
                "teacher_logits and student_logits must have the same dtype. "
                f"Received: {teacher.dtype.name} and {student.dtype.name}"
            )
        if teacher.shape.rank == 0:
            raise ValueError(
                "The logits must have rank >= 1 ([..., classes]). "
                f"Received: teacher_logits.shape={tuple(teacher.shape)}"
            )
        if not teacher.shape.is_compatible_with(student.shape):
            raise ValueError(
                "teacher_logits and student_logits must have the same shape. "
                f"Received: {tuple(teacher.shape)} and {tuple(student.shape)}"
            )
        if not teacher_gradient:
            teacher = tf.stop_gradient(teacher)
        lib = _loader.select(
            "softmax_kl_divergence", use_fused_kernel, (teacher, student)
        )
        if lib is None:
            return _softmax_kl_reference(teacher, student, temperature)
        loss, _, _ = lib.kbm_softmax_kl_divergence(
            teacher,
            student,
            temperature=temperature,
            teacher_gradient=bool(teacher_gradient),
            U=compute_dtype(teacher.dtype),
        )
        return loss


def _softmax_kl_reference(teacher, student, temperature):
    """KL via log-softmax in at least float32: the fallback and oracle.

    Classes with a `-inf` teacher logit have p = 0 and contribute 0.
    """
    dtype = compute_dtype(teacher.dtype)
    t = tf.cast(teacher, dtype) / temperature
    s = tf.cast(student, dtype) / temperature
    log_p = tf.nn.log_softmax(t, axis=-1)
    log_q = tf.nn.log_softmax(s, axis=-1)
    p = tf.exp(log_p)
    # Masked classes (p = 0) contribute 0; their -inf logs are replaced
    # before the product so the gradient is not 0 * inf = NaN. A NaN p (NaN
    # logits) is kept: the loss and its gradient are then NaN, not 0.
    kept = tf.logical_not(tf.equal(p, 0))
    log_p = tf.where(kept, log_p, tf.zeros_like(log_p))
    log_q = tf.where(kept, log_q, tf.zeros_like(log_q))
    return tf.reduce_sum(p * (log_p - log_q), axis=-1)


@tf.RegisterGradient("Kbm>SoftmaxKLDivergence")
def _softmax_kl_grad(op, dloss, unused_dlse_t, unused_dlse_s):
    teacher, student = op.inputs
    loss, lse_t, lse_s = op.outputs
    teacher_gradient = op.get_attr("teacher_gradient")
    dteacher, dstudent = _loader.library().kbm_softmax_kl_divergence_grad(
        dloss,
        teacher,
        student,
        loss,
        lse_t,
        lse_s,
        temperature=op.get_attr("temperature"),
        teacher_gradient=teacher_gradient,
    )
    return (dteacher if teacher_gradient else None), dstudent


@tf.RegisterGradient("Kbm>SoftmaxKLDivergenceGrad")
def _softmax_kl_grad_grad(op, ddteacher, ddstudent):
    dloss, teacher, student = op.inputs[:3]
    temperature = op.get_attr("temperature")

    def backward(dloss, teacher, student):
        return reference_vjp(
            lambda t, s: [_softmax_kl_reference(t, s, temperature)],
            [teacher, student],
            [dloss],
        )

    grads = reference_vjp(
        backward, [dloss, teacher, student], [ddteacher, ddstudent]
    )
    return [*grads, None, None, None]
