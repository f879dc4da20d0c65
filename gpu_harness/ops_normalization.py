"""ctypes bindings of the normalisation launchers, and float64 references.

The wrappers take CUDA tensors ([..., C] in float32 / float16 / bfloat16,
gamma and beta float32 [C]), allocate their outputs filled with NaN (so an
element a kernel fails to write shows up), call the launcher on torch's
current stream and raise RuntimeError on a nonzero return code.
"""

import ctypes

import torch

from gpu_harness import kbm_gpu

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_F32 = ctypes.c_float
_INT = ctypes.c_int
_SIZE = ctypes.c_size_t

_SIGNATURES = {
    "kbm_normalization_layer_norm_fwd": (
        [_INT, _P, _P, _P, _P, _P, _P, _I64, _I64, _F32, _P],
        _INT,
    ),
    "kbm_normalization_rms_norm_fwd": (
        [_INT, _P, _P, _P, _P, _I64, _I64, _F32, _P],
        _INT,
    ),
    "kbm_normalization_layer_norm_bwd_workspace": ([_INT, _I64, _I64], _SIZE),
    "kbm_normalization_rms_norm_bwd_workspace": ([_INT, _I64, _I64], _SIZE),
    "kbm_normalization_layer_norm_bwd": (
        [_INT, _P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _P, _P],
        _INT,
    ),
    "kbm_normalization_rms_norm_bwd": (
        [_INT, _P, _P, _P, _P, _P, _P, _I64, _I64, _P, _P],
        _INT,
    ),
}
_typed = {}


def _fn(name):
    """The shim function `name` with its ctypes signature set."""
    if name not in _typed:
        f = getattr(kbm_gpu.lib(), name)
        f.argtypes, f.restype = _SIGNATURES[name]
        _typed[name] = f
    return _typed[name]


def _rows_cols(x):
    cols = x.shape[-1]
    return (x.numel() // cols if cols else 0), cols


def _workspace(nbytes):
    return torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device="cuda")


def layer_norm_fwd(x, gamma, beta, epsilon=1e-3):
    """Kernel LayerNorm: returns (y, mean, rstd)."""
    x = x.contiguous()
    rows, cols = _rows_cols(x)
    y = kbm_gpu.nan_like(x)
    mean = kbm_gpu.nan_empty(x.shape[:-1], torch.float32)
    rstd = kbm_gpu.nan_empty(x.shape[:-1], torch.float32)
    rc = _fn("kbm_normalization_layer_norm_fwd")(
        kbm_gpu.DTYPE[x.dtype],
        kbm_gpu.ptr(x),
        kbm_gpu.ptr(gamma),
        kbm_gpu.ptr(beta),
        kbm_gpu.ptr(y),
        kbm_gpu.ptr(mean),
        kbm_gpu.ptr(rstd),
        rows,
        cols,
        float(epsilon),
        kbm_gpu.stream(),
    )
    kbm_gpu.check(rc, "layer_norm_fwd")
    return y, mean, rstd


def rms_norm_fwd(x, gamma, epsilon=1e-6):
    """Kernel RMSNorm: returns (y, rstd)."""
    x = x.contiguous()
    rows, cols = _rows_cols(x)
    y = kbm_gpu.nan_like(x)
    rstd = kbm_gpu.nan_empty(x.shape[:-1], torch.float32)
    rc = _fn("kbm_normalization_rms_norm_fwd")(
        kbm_gpu.DTYPE[x.dtype],
        kbm_gpu.ptr(x),
        kbm_gpu.ptr(gamma),
        kbm_gpu.ptr(y),
        kbm_gpu.ptr(rstd),
        rows,
        cols,
        float(epsilon),
        kbm_gpu.stream(),
    )
    kbm_gpu.check(rc, "rms_norm_fwd")
    return y, rstd


def layer_norm_bwd(dy, x, gamma, mean, rstd, out=None):
    """Kernel LayerNorm gradient: returns (dx, dgamma, dbeta).

    `out` (optional) is the dx tensor to write (e.g. dy itself, in place).
    """
    x = x.contiguous()
    rows, cols = _rows_cols(x)
    code = kbm_gpu.DTYPE[x.dtype]
    ws = _workspace(
        _fn("kbm_normalization_layer_norm_bwd_workspace")(code, rows, cols)
    )
    dx = kbm_gpu.nan_like(x) if out is None else out
    dgamma = kbm_gpu.nan_empty((cols,), torch.float32)
    dbeta = kbm_gpu.nan_empty((cols,), torch.float32)
    rc = _fn("kbm_normalization_layer_norm_bwd")(
        code,
        kbm_gpu.ptr(dy),
        kbm_gpu.ptr(x),
        kbm_gpu.ptr(gamma),
        kbm_gpu.ptr(mean),
        kbm_gpu.ptr(rstd),
        kbm_gpu.ptr(dx),
        kbm_gpu.ptr(dgamma),
        kbm_gpu.ptr(dbeta),
        rows,
        cols,
        kbm_gpu.ptr(ws),
        kbm_gpu.stream(),
    )
    kbm_gpu.check(rc, "layer_norm_bwd")
    return dx, dgamma, dbeta


def rms_norm_bwd(dy, x, gamma, rstd, out=None):
    """Kernel RMSNorm gradient: returns (dx, dgamma)."""
    x = x.contiguous()
    rows, cols = _rows_cols(x)
    code = kbm_gpu.DTYPE[x.dtype]
    ws = _workspace(
        _fn("kbm_normalization_rms_norm_bwd_workspace")(code, rows, cols)
    )
    dx = kbm_gpu.nan_like(x) if out is None else out
    dgamma = kbm_gpu.nan_empty((cols,), torch.float32)
    rc = _fn("kbm_normalization_rms_norm_bwd")(
        code,
        kbm_gpu.ptr(dy),
        kbm_gpu.ptr(x),
        kbm_gpu.ptr(gamma),
        kbm_gpu.ptr(rstd),
        kbm_gpu.ptr(dx),
        kbm_gpu.ptr(dgamma),
        rows,
        cols,
        kbm_gpu.ptr(ws),
        kbm_gpu.stream(),
    )
    kbm_gpu.check(rc, "rms_norm_bwd")
    return dx, dgamma


# ------------------------------------------------------------- references
# Plain float64 formulas (the test oracle); inputs of any dtype/device.


def layer_norm_ref(x, gamma, beta, epsilon=1e-3):
    """(y, mean, rstd) in float64."""
    x = x.double()
    mean = x.mean(-1)
    var = ((x - mean[..., None]) ** 2).mean(-1)
    rstd = 1.0 / torch.sqrt(var + epsilon)
    xhat = (x - mean[..., None]) * rstd[..., None]
    return xhat * gamma.double() + beta.double(), mean, rstd


def rms_norm_ref(x, gamma, epsilon=1e-6):
    """(y, rstd) in float64."""
    x = x.double()
    rstd = 1.0 / torch.sqrt((x * x).mean(-1) + epsilon)
    return x * rstd[..., None] * gamma.double(), rstd


def layer_norm_bwd_ref(dy, x, gamma, mean, rstd):
    """(dx, dgamma, dbeta) in float64 from the given statistics."""
    dy, x, gamma = dy.double(), x.double(), gamma.double()
    mean, rstd = mean.double()[..., None], rstd.double()[..., None]
    cols = x.shape[-1]
    xhat = (x - mean) * rstd
    gdy = gamma * dy
    s1 = gdy.sum(-1, keepdim=True)
    s2 = (gdy * xhat).sum(-1, keepdim=True)
    dx = rstd * (gdy - (s1 + xhat * s2) / cols)
    lead = tuple(range(x.dim() - 1))
    return dx, (dy * xhat).sum(lead), dy.sum(lead)


def rms_norm_bwd_ref(dy, x, gamma, rstd):
    """(dx, dgamma) in float64 from the given rstd."""
    dy, x, gamma = dy.double(), x.double(), gamma.double()
    rstd = rstd.double()[..., None]
    cols = x.shape[-1]
    xhat = x * rstd
    gdy = gamma * dy
    s2 = (gdy * xhat).sum(-1, keepdim=True)
    dx = rstd * (gdy - xhat * s2 / cols)
    lead = tuple(range(x.dim() - 1))
    return dx, (dy * xhat).sum(lead)
