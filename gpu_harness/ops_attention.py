"""ctypes bindings of the flash-attention launchers and their references.

Layouts as the kbm op: q [B, Tq, Hq, D], k [B, Tk, Hkv, D], v [B, Tk, Hkv, Dv],
o [B, Tq, Hq, Dv], lse [B, Hq, Tq] float32; key_mask [B, Tk] bool, mask
[Bm, Tq, Tk] bool (Bm 1 or B), both optional (True = attend).

The references run in float64 with an explicit softmax; grouped-query heads
are expanded with repeat_interleave. `philox4x32_10` and `dropout_keep_numpy`
are a NumPy transcription of cc/common/philox.h (the attention-dropout
stream), to check the device mask against.
"""

import ctypes

import numpy as np
import torch

from gpu_harness import kbm_gpu

_I64 = ctypes.c_int64
_U64 = ctypes.c_uint64
_F32 = ctypes.c_float
_INT = ctypes.c_int
_PTR = ctypes.c_void_p
_configured = None


def _lib():
    global _configured
    lib = kbm_gpu.lib()
    if _configured is not lib:
        sizes = [_I64] * 8  # B, Tq, Tk, Hq, Hkv, D, Dv, mask_batch
        attrs = [_F32, _INT, _INT, _F32, _U64, _U64, _INT]
        lib.kbm_attention_forward.argtypes = (
            [_INT] + [_PTR] * 7 + sizes + attrs + [_PTR]
        )
        lib.kbm_attention_forward.restype = _INT
        lib.kbm_attention_backward.argtypes = (
            [_INT] + [_PTR] * 11 + sizes + attrs + [_PTR, _PTR]
        )
        lib.kbm_attention_backward.restype = _INT
        lib.kbm_attention_backward_workspace.argtypes = [_I64] * 3
        lib.kbm_attention_backward_workspace.restype = ctypes.c_size_t
        lib.kbm_attention_dropout_mask.argtypes = (
            [_U64, _U64]
            + [_I64] * 4
            + [
                _F32,
                _PTR,
                _PTR,
            ]
        )
        lib.kbm_attention_dropout_mask.restype = _INT
        _configured = lib
    return lib


def _sizes(q, k, v, mask):
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    dv = v.shape[3]
    mask_batch = mask.shape[0] if mask is not None else 1
    return [b, tq, tk, hq, hkv, d, dv, mask_batch]


def _attrs(scale, causal, top_left, rate, seed, variant):
    s0, s1 = (int(x) & (2**64 - 1) for x in seed)
    return [
        float(scale),
        int(causal),
        int(top_left),
        float(rate),
        s0,
        s1,
        int(variant),
    ]


def _contig(*ts):
    return [None if t is None else t.contiguous() for t in ts]


def forward(
    q,
    k,
    v,
    key_mask=None,
    mask=None,
    scale=None,
    causal=False,
    top_left=False,
    rate=0.0,
    seed=(0, 0),
    variant=0,
):
    """kbm flash attention forward: returns (o, lse).

    variant 0: the default tensor-core kernels; 1: the plain ones (float16 /
    bfloat16 only; float32 has one kernel).
    """
    q, k, v, key_mask, mask = _contig(q, k, v, key_mask, mask)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    b, tq, hq, _ = q.shape
    o = kbm_gpu.nan_empty((b, tq, hq, v.shape[3]), q.dtype)
    lse = kbm_gpu.nan_empty((b, hq, tq), torch.float32)
    p = kbm_gpu.ptr
    rc = _lib().kbm_attention_forward(
        kbm_gpu.DTYPE[q.dtype],
        p(q),
        p(k),
        p(v),
        p(key_mask),
        p(mask),
        p(o),
        p(lse),
        *_sizes(q, k, v, mask),
        *_attrs(scale, causal, top_left, rate, seed, variant),
        kbm_gpu.stream(),
    )
    kbm_gpu.check(rc, "kbm_attention_forward")
    return o, lse


def backward(
    d_o,
    q,
    k,
    v,
    o,
    lse,
    key_mask=None,
    mask=None,
    scale=None,
    causal=False,
    top_left=False,
    rate=0.0,
    seed=(0, 0),
    variant=0,
):
    """kbm flash attention backward: returns (dq, dk, dv)."""
    d_o, q, k, v, o, lse, key_mask, mask = _contig(
        d_o, q, k, v, o, lse, key_mask, mask
    )
    if scale is None:
        scale = q.shape[-1] ** -0.5
    b, tq, hq, _ = q.shape
    lib = _lib()
    ws_bytes = lib.kbm_attention_backward_workspace(b, tq, hq)
    ws = torch.empty(max(int(ws_bytes), 1), dtype=torch.uint8, device="cuda")
    dq, dk, dv = (kbm_gpu.nan_like(t) for t in (q, k, v))
    p = kbm_gpu.ptr
    rc = lib.kbm_attention_backward(
        kbm_gpu.DTYPE[q.dtype],
        p(d_o),
        p(q),
        p(k),
        p(v),
        p(key_mask),
        p(mask),
        p(o),
        p(lse),
        p(dq),
        p(dk),
        p(dv),
        *_sizes(q, k, v, mask),
        *_attrs(scale, causal, top_left, rate, seed, variant),
        p(ws),
        kbm_gpu.stream(),
    )
    kbm_gpu.check(rc, "kbm_attention_backward")
    return dq, dk, dv


def dropout_mask(seed, shape, rate):
    """The device keep mask [B, H, Tq, Tk] (bool) the kernels use."""
    keep = torch.zeros(tuple(shape), dtype=torch.bool, device="cuda")
    s0, s1 = (int(x) & (2**64 - 1) for x in seed)
    rc = _lib().kbm_attention_dropout_mask(
        s0,
        s1,
        *[int(x) for x in shape],
        float(rate),
        kbm_gpu.ptr(keep),
        kbm_gpu.stream(),
    )
    kbm_gpu.check(rc, "kbm_attention_dropout_mask")
    return keep


# ---------------------------------------------------------------- references


def visible(
    b,
    tq,
    tk,
    key_mask=None,
    mask=None,
    causal=False,
    top_left=False,
    device="cpu",
):
    """[B, 1, Tq, Tk] bool: which keys each query sees."""
    vis = torch.ones((b, 1, tq, tk), dtype=torch.bool, device=device)
    if key_mask is not None:
        vis = vis & key_mask.to(device)[:, None, None, :]
    if mask is not None:
        vis = vis & mask.to(device)[:, None, :, :]
    if causal:
        offset = 0 if top_left else tk - tq
        i = torch.arange(tq, device=device)[:, None]
        j = torch.arange(tk, device=device)[None, :]
        vis = vis & (j <= i + offset)
    return vis


def reference_forward(
    q,
    k,
    v,
    key_mask=None,
    mask=None,
    scale=None,
    causal=False,
    top_left=False,
    rate=0.0,
    keep=None,
):
    """float64 attention: (o [B, Tq, Hq, Dv], lse [B, Hq, Tq]).

    Differentiable in q, k, v (float64 leaves). `keep` [B, Hq, Tq, Tk] is
    the dropout keep mask (used when rate > 0). A row with no visible key
    gets o = 0 and lse = +inf.
    """
    q, k, v = (t.double() for t in (q, k, v))
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    if scale is None:
        scale = d**-0.5
    group = hq // hkv
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    vis = visible(b, tq, tk, key_mask, mask, causal, top_left, q.device)
    vis = vis.expand(b, hq, tq, tk)
    row_any = vis.any(dim=-1)
    s0 = s.masked_fill(~vis, 0.0)
    m = s.masked_fill(~vis, float("-inf")).amax(dim=-1)
    m = torch.where(row_any, m, torch.zeros_like(m)).detach()
    e = torch.where(vis, torch.exp(s0 - m[..., None]), torch.zeros_like(s0))
    den = e.sum(dim=-1)
    safe = torch.where(row_any, den, torch.ones_like(den))
    p = e / safe[..., None]
    if rate > 0:
        p = p * keep.to(p.device).double() / (1.0 - rate)
    o = torch.einsum("bhij,bjhd->bihd", p, v)
    lse = torch.where(
        row_any, m + torch.log(safe), torch.full_like(m, float("inf"))
    )
    return o, lse


def reference_backward(d_o, q, k, v, **kwargs):
    """float64 (dq, dk, dv) by autograd through reference_forward."""
    q64, k64, v64 = (
        t.detach().double().requires_grad_(True) for t in (q, k, v)
    )
    o, _ = reference_forward(q64, k64, v64, **kwargs)
    return torch.autograd.grad(o, (q64, k64, v64), d_o.double())


_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(ctr, k0, k1):
    """Philox4x32-10 on uint32 counters ctr [..., 4] under key (k0, k1)."""
    c = [np.asarray(ctr[..., i], dtype=np.uint64) for i in range(4)]
    k0 = np.asarray(k0, dtype=np.uint64)
    k1 = np.asarray(k1, dtype=np.uint64)
    for _ in range(10):
        p0 = np.uint64(_M0) * c[0]
        p1 = np.uint64(_M1) * c[2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0 = (k0 + np.uint64(_W0)) & _MASK32
        k1 = (k1 + np.uint64(_W1)) & _MASK32
    return np.stack([x.astype(np.uint32) for x in c], axis=-1)


def dropout_threshold(rate):
    """cc/common/philox.h DropoutThreshold (rate as float32)."""
    rate = float(np.float32(rate))
    if not rate > 0.0:
        return 0
    t = rate * 4294967296.0
    return 0xFFFFFFFF if t >= 4294967295.0 else int(t)


def dropout_keep_numpy(seed, shape, rate):
    """The attention-dropout keep mask [B, H, Tq, Tk] computed with NumPy."""
    s0, s1 = (int(x) & (2**64 - 1) for x in seed)
    n = int(np.prod(shape))
    flat = np.arange(n, dtype=np.uint64)
    group = flat >> np.uint64(2)
    ctr = np.stack(
        [
            group & _MASK32,
            group >> np.uint64(32),
            np.full(n, s1 & 0xFFFFFFFF, dtype=np.uint64),
            np.full(n, s1 >> 32, dtype=np.uint64),
        ],
        axis=-1,
    )
    r = philox4x32_10(ctr, s0 & 0xFFFFFFFF, s0 >> 32)
    lane = (flat & np.uint64(3)).astype(np.int64)
    u = r[np.arange(n), lane]
    return (u >= np.uint32(dropout_threshold(rate))).reshape(shape)
