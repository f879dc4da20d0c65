"""ctypes bindings of the bias + GELU launchers, and float64 references.

The wrappers take CUDA tensors (x: [..., C], bias: [C], both in float32 /
float16 / bfloat16), allocate outputs filled with NaN, call the launcher on
torch's current stream and raise RuntimeError on a nonzero return code.
"""

import ctypes
import math

import torch

from gpu_harness import kbm_gpu

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int
_SIZE = ctypes.c_size_t

_SIGNATURES = {
    "kbm_bias_activation_bias_gelu_fwd": (
        [_INT, _P, _P, _P, _I64, _I64, _INT, _P],
        _INT,
    ),
    "kbm_bias_activation_bias_gelu_bwd_workspace": ([_INT, _I64, _I64], _SIZE),
    "kbm_bias_activation_bias_gelu_bwd": (
        [_INT, _P, _P, _P, _P, _P, _I64, _I64, _INT, _P, _P],
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


def bias_gelu_fwd(x, bias, approximate=False, out=None):
    """Kernel y = gelu(x + bias); `out` may be x itself (in place)."""
    rows, cols = _rows_cols(x)
    y = kbm_gpu.nan_like(x) if out is None else out
    rc = _fn("kbm_bias_activation_bias_gelu_fwd")(
        kbm_gpu.DTYPE[x.dtype],
        kbm_gpu.ptr(x),
        kbm_gpu.ptr(bias),
        kbm_gpu.ptr(y),
        rows,
        cols,
        int(bool(approximate)),
        kbm_gpu.stream(),
    )
    kbm_gpu.check(rc, "bias_gelu_fwd")
    return y


def bias_gelu_bwd(dy, x, bias, approximate=False, out=None):
    """Kernel gradient: returns (dx, dbias)."""
    rows, cols = _rows_cols(x)
    code = kbm_gpu.DTYPE[x.dtype]
    nbytes = _fn("kbm_bias_activation_bias_gelu_bwd_workspace")(
        code, rows, cols
    )
    ws = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device="cuda")
    dx = kbm_gpu.nan_like(x) if out is None else out
    dbias = kbm_gpu.nan_empty((cols,), x.dtype)
    rc = _fn("kbm_bias_activation_bias_gelu_bwd")(
        code,
        kbm_gpu.ptr(dy),
        kbm_gpu.ptr(x),
        kbm_gpu.ptr(bias),
        kbm_gpu.ptr(dx),
        kbm_gpu.ptr(dbias),
        rows,
        cols,
        int(bool(approximate)),
        kbm_gpu.ptr(ws),
        kbm_gpu.stream(),
    )
    kbm_gpu.check(rc, "bias_gelu_bwd")
    return dx, dbias


# ------------------------------------------------------------- references

_TANH_SCALE = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


def gelu_ref(z, approximate=False):
    """GELU of z in float64."""
    z = z.double()
    if approximate:
        u = _TANH_SCALE * (z + _TANH_CUBIC * z**3)
        return 0.5 * z * (1.0 + torch.tanh(u))
    return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))


def gelu_grad_ref(z, approximate=False):
    """d gelu / dz in float64."""
    z = z.double()
    if approximate:
        u = _TANH_SCALE * (z + _TANH_CUBIC * z**3)
        t = torch.tanh(u)
        du = _TANH_SCALE * (1.0 + 3.0 * _TANH_CUBIC * z * z)
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * pdf


def bias_gelu_ref(x, bias, approximate=False):
    """y = gelu(x + bias) in float64."""
    return gelu_ref(x.double() + bias.double(), approximate)


def bias_gelu_bwd_ref(dy, x, bias, approximate=False):
    """(dx, dbias) in float64."""
    dx = dy.double() * gelu_grad_ref(x.double() + bias.double(), approximate)
    return dx, dx.reshape(-1, x.shape[-1]).sum(0)
