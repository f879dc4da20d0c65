"""ctypes bindings of the softmax-KL launchers, and float64 references.

The wrappers take CUDA logits ([..., C] in float32 / float16 / bfloat16) and
float32 per-row tensors, allocate outputs filled with NaN, call the launcher
on torch's current stream and raise RuntimeError on a nonzero return code.
"""

import ctypes

import torch

from gpu_harness import kbm_gpu

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_F32 = ctypes.c_float
_INT = ctypes.c_int

_SIGNATURES = {
    "kbm_distillation_softmax_kl_fwd": (
        [_INT, _P, _P, _P, _P, _P, _I64, _I64, _F32, _P],
        _INT,
    ),
    "kbm_distillation_softmax_kl_bwd": (
        [_INT, _P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _F32, _P],
        _INT,
    ),
}
_typed = {}


def _fn(name):
    if name not in _typed:
        f = getattr(kbm_gpu.lib(), name)
        f.argtypes, f.restype = _SIGNATURES[name]
        _typed[name] = f
    return _typed[name]


def _rows_cols(x):
    cols = x.shape[-1]
    return (x.numel() // cols if cols else 0), cols


def softmax_kl_fwd(teacher, student, temperature=1.0):
    """Kernel forward: returns (loss, teacher_lse, student_lse), float32."""
    rows, cols = _rows_cols(teacher)
    loss = kbm_gpu.nan_empty(teacher.shape[:-1], torch.float32)
    lse_t = kbm_gpu.nan_empty(teacher.shape[:-1], torch.float32)
    lse_s = kbm_gpu.nan_empty(teacher.shape[:-1], torch.float32)
    rc = _fn("kbm_distillation_softmax_kl_fwd")(
        kbm_gpu.DTYPE[teacher.dtype],
        kbm_gpu.ptr(teacher),
        kbm_gpu.ptr(student),
        kbm_gpu.ptr(loss),
        kbm_gpu.ptr(lse_t),
        kbm_gpu.ptr(lse_s),
        rows,
        cols,
        float(temperature),
        kbm_gpu.stream(),
    )
    kbm_gpu.check(rc, "softmax_kl_fwd")
    return loss, lse_t, lse_s


def softmax_kl_bwd(
    dloss,
    teacher,
    student,
    loss,
    teacher_lse,
    student_lse,
    temperature=1.0,
    teacher_gradient=True,
    out=None,
):
    """Kernel gradient: returns (dteacher or None, dstudent).

    `out` (optional) is the dstudent tensor to write (e.g. student itself).
    """
    rows, cols = _rows_cols(teacher)
    dteacher = kbm_gpu.nan_like(teacher) if teacher_gradient else None
    dstudent = kbm_gpu.nan_like(student) if out is None else out
    rc = _fn("kbm_distillation_softmax_kl_bwd")(
        kbm_gpu.DTYPE[teacher.dtype],
        kbm_gpu.ptr(dloss),
        kbm_gpu.ptr(teacher),
        kbm_gpu.ptr(student),
        kbm_gpu.ptr(loss),
        kbm_gpu.ptr(teacher_lse),
        kbm_gpu.ptr(student_lse),
        kbm_gpu.ptr(dteacher),
        kbm_gpu.ptr(dstudent),
        rows,
        cols,
        float(temperature),
        kbm_gpu.stream(),
    )
    kbm_gpu.check(rc, "softmax_kl_bwd")
    return dteacher, dstudent


# ------------------------------------------------------------- references


def softmax_kl_ref(teacher, student, temperature=1.0):
    """(loss, teacher_lse, student_lse) in float64; classes whose teacher
    probability is 0 (logit -inf, or exp underflow) contribute 0, as in the
    CPU kernel (which skips them even where the student logit is -inf)."""
    t = teacher.double() / temperature
    s = student.double() / temperature
    lse_t = torch.logsumexp(t, -1)
    lse_s = torch.logsumexp(s, -1)
    lp = t - lse_t[..., None]
    lq = s - lse_s[..., None]
    p = lp.exp()
    masked = (teacher == float("-inf")) | (p == 0)
    terms = torch.where(masked, torch.zeros_like(lp), p * (lp - lq))
    return terms.sum(-1), lse_t, lse_s


def softmax_kl_bwd_ref(
    dloss, teacher, student, loss, teacher_lse, student_lse, temperature=1.0
):
    """(dteacher, dstudent) in float64 from the given row statistics."""
    t = teacher.double() / temperature
    s = student.double() / temperature
    g = dloss.double()[..., None] / temperature
    lp = t - teacher_lse.double()[..., None]
    lq = s - student_lse.double()[..., None]
    masked_t = teacher == float("-inf")
    masked_s = student == float("-inf")
    p = torch.where(masked_t, torch.zeros_like(lp), lp.exp())
    q = torch.where(masked_s, torch.zeros_like(lq), lq.exp())
    dstudent = g * (q - p)
    loss = loss.double()[..., None]
    zero = torch.zeros_like(p)
    dteacher = torch.where(p == 0, zero, g * p * (lp - lq - loss))
    return dteacher, dstudent
