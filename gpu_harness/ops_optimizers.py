"""ctypes bindings of the optimizer family's launchers, and float64 torch
references with the arithmetic of kbm's CPU kernels.

Every update is in place on lists of CUDA tensors of one dtype (float32,
float16 or bfloat16; gradients of the same dtype), with float32 scalars that
stay on the device. `bind_adam` / `bind_lamb` / `bind_lion` build the
pointer tables once and return a callable (benchmarks time that call);
`adam` / `lamb` / `lion` bind and call once.
"""

import ctypes

import torch

from gpu_harness import kbm_gpu

_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_SIZES = ctypes.POINTER(ctypes.c_int64)
_I = ctypes.c_int

_SIGNATURES = {
    "kbm_optimizers_adam": [_I, _I, _PP, _PP, _PP, _PP, _SIZES]
    + [_P] * 7
    + [_P],
    "kbm_optimizers_lamb": [_I, _I, _PP, _PP, _PP, _PP, _SIZES]
    + [_P] * 7
    + [_P, _P],
    "kbm_optimizers_lion": [_I, _I, _PP, _PP, _PP, _SIZES] + [_P] * 4 + [_P],
}

_configured = False


def _lib():
    global _configured
    lib = kbm_gpu.lib()
    if not _configured:
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int
        lib.kbm_optimizers_lamb_workspace.argtypes = [_I, _SIZES]
        lib.kbm_optimizers_lamb_workspace.restype = ctypes.c_size_t
        _configured = True
    return lib


def _pointers(tensors):
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _scalar(x):
    """A float32 scalar on the GPU (tensors are kept, cast if needed)."""
    if isinstance(x, torch.Tensor):
        return x.to(device="cuda", dtype=torch.float32).reshape(())
    return torch.tensor(float(x), dtype=torch.float32, device="cuda")


def _check_lists(*lists):
    first = lists[0]
    if not first:
        raise ValueError("empty tensor list")
    dtype = first[0].dtype
    if dtype not in kbm_gpu.DTYPE:
        raise ValueError(f"unsupported dtype {dtype}")
    for tensors in lists:
        if len(tensors) != len(first):
            raise ValueError("tensor lists of different lengths")
        for t, p in zip(tensors, first):
            if t.dtype != dtype or not t.is_cuda or not t.is_contiguous():
                raise ValueError("tensors must be contiguous CUDA tensors")
            if t.numel() != p.numel():
                raise ValueError("a slot or gradient of another size")
    return kbm_gpu.DTYPE[dtype]


class _Bound:
    """A launcher call with its tables built; keeps what it points to."""

    def __init__(self, fn, what, args, keep):
        self._fn, self._what, self._args, self._keep = fn, what, args, keep

    def __call__(self):
        kbm_gpu.check(self._fn(*self._args, kbm_gpu.stream()), self._what)


def _decays(decays, n):
    d = _scalar(0.0) if decays is None else decays
    d = torch.as_tensor(d, dtype=torch.float32).to("cuda").reshape(-1)
    if d.numel() == 1 and n != 1:
        d = d.expand(n).contiguous()
    if d.numel() != n:
        raise ValueError(f"decays must have {n} values, got {d.numel()}")
    return d


def bind_adam(
    params,
    ms,
    vs,
    grads,
    *,
    one_minus_beta_1,
    one_minus_beta_2,
    coef_adaptive,
    bias_2,
    coef_sgd,
    epsilon,
    decays=None,
):
    dtype = _check_lists(params, ms, vs, grads)
    n = len(params)
    tables = [_pointers(x) for x in (params, ms, vs, grads)]
    sizes = (ctypes.c_int64 * n)(*[t.numel() for t in params])
    scalars = [
        _scalar(x)
        for x in (
            one_minus_beta_1,
            one_minus_beta_2,
            coef_adaptive,
            bias_2,
            coef_sgd,
            epsilon,
        )
    ]
    d = _decays(decays, n)
    args = [dtype, n, *tables, sizes, *[s.data_ptr() for s in scalars]]
    args.append(d.data_ptr())
    keep = (params, ms, vs, grads, tables, sizes, scalars, d)
    return _Bound(_lib().kbm_optimizers_adam, "adam", args, keep)


def bind_lamb(
    params,
    ms,
    vs,
    grads,
    *,
    learning_rate,
    one_minus_beta_1,
    one_minus_beta_2,
    bias_1,
    bias_2,
    epsilon,
    decays=None,
):
    dtype = _check_lists(params, ms, vs, grads)
    n = len(params)
    tables = [_pointers(x) for x in (params, ms, vs, grads)]
    sizes = (ctypes.c_int64 * n)(*[t.numel() for t in params])
    scalars = [
        _scalar(x)
        for x in (
            learning_rate,
            one_minus_beta_1,
            one_minus_beta_2,
            bias_1,
            bias_2,
            epsilon,
        )
    ]
    d = _decays(decays, n)
    nbytes = _lib().kbm_optimizers_lamb_workspace(n, sizes)
    workspace = torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cuda")
    args = [dtype, n, *tables, sizes, *[s.data_ptr() for s in scalars]]
    args += [d.data_ptr(), workspace.data_ptr()]
    keep = (params, ms, vs, grads, tables, sizes, scalars, d, workspace)
    return _Bound(_lib().kbm_optimizers_lamb, "lamb", args, keep)


def bind_lion(params, ms, grads, *, learning_rate, beta_1, beta_2, decays=None):
    dtype = _check_lists(params, ms, grads)
    n = len(params)
    tables = [_pointers(x) for x in (params, ms, grads)]
    sizes = (ctypes.c_int64 * n)(*[t.numel() for t in params])
    scalars = [_scalar(x) for x in (learning_rate, beta_1, beta_2)]
    d = _decays(decays, n)
    args = [dtype, n, *tables, sizes, *[s.data_ptr() for s in scalars]]
    args.append(d.data_ptr())
    keep = (params, ms, grads, tables, sizes, scalars, d)
    return _Bound(_lib().kbm_optimizers_lion, "lion", args, keep)


def adam(*args, **kwargs):
    """Adam-family step in place (see `adam_reference`)."""
    bind_adam(*args, **kwargs)()


def lamb(*args, **kwargs):
    """LAMB step in place (see `lamb_reference`)."""
    bind_lamb(*args, **kwargs)()


def lion(*args, **kwargs):
    """Lion step in place (see `lion_reference`)."""
    bind_lion(*args, **kwargs)()


# --------------------------------------------------------------- references
# One variable, float64, written plainly with the CPU kernels' operation
# order (cc/optimizers/kernels/optimizers.h). They return new tensors.


def _f64(*xs):
    return [torch.as_tensor(x).to(torch.float64) for x in xs]


def adam_reference(
    p, m, v, g, decay, omb1, omb2, coef_adaptive, bias_2, coef_sgd, epsilon
):
    """Returns (p, m, v) after one Adam-family step."""
    p, m, v, g = _f64(p, m, v, g)
    m = m + (g - m) * omb1
    v = v + (g * g - v) * omb2
    p = p - p * decay
    p = p - (
        (m * coef_adaptive) / (torch.sqrt(v / bias_2) + epsilon) + m * coef_sgd
    )
    return p, m, v


def lamb_reference(
    p, m, v, g, decay, learning_rate, omb1, omb2, bias_1, bias_2, epsilon
):
    """Returns (p, m, v) after one LAMB step (trust ratio over the whole
    tensor, 1 if either norm is 0)."""
    p, m, v, g = _f64(p, m, v, g)
    m = m + (g - m) * omb1
    v = v + (g * g - v) * omb2
    p = p - p * decay
    u = (m / bias_1) / (torch.sqrt(v / bias_2) + epsilon)
    w_norm = torch.linalg.vector_norm(p)
    u_norm = torch.linalg.vector_norm(u)
    ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
    p = p - (ratio * learning_rate) * u
    return p, m, v


def lion_reference(p, m, g, decay, learning_rate, beta_1, beta_2):
    """Returns (p, m, c) after one Lion step; c = m * beta_1 + g * (1 -
    beta_1) is the value whose sign moves p (checks skip |c| ~ 0)."""
    p, m, g = _f64(p, m, g)
    c = m * beta_1 + g * (1.0 - beta_1)
    p = (p - p * decay) - learning_rate * torch.sign(c)
    m = m * beta_2 + g * (1.0 - beta_2)
    return p, m, c


def adamw_scalars(learning_rate, beta_1, beta_2, epsilon, step):
    """The Adam kernel's scalars for AdamW at `step` (1-based), Keras's
    arithmetic: lr * sqrt(1 - b2^t) / (1 - b1^t), bias_2 = 1, no SGD term."""
    return dict(
        one_minus_beta_1=1.0 - beta_1,
        one_minus_beta_2=1.0 - beta_2,
        coef_adaptive=learning_rate
        * (1.0 - beta_2**step) ** 0.5
        / (1.0 - beta_1**step),
        bias_2=1.0,
        coef_sgd=0.0,
        epsilon=epsilon,
    )


def lamb_scalars(learning_rate, beta_1, beta_2, epsilon, step):
    """The LAMB kernel's scalars at `step` (1-based)."""
    return dict(
        learning_rate=learning_rate,
        one_minus_beta_1=1.0 - beta_1,
        one_minus_beta_2=1.0 - beta_2,
        bias_1=1.0 - beta_1**step,
        bias_2=1.0 - beta_2**step,
        epsilon=epsilon,
    )
