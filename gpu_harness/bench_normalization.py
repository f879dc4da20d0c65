"""Times kbm's LayerNorm / RMSNorm launchers against PyTorch eager.

PyTorch: F.layer_norm / F.rms_norm forward, autograd backward (dx, dweight,
dbias), weights in the input dtype. kbm: the launchers with preallocated
outputs and workspace. Cases: forward, backward, and the forward+backward
pair; "bytes" is the minimal traffic (each tensor read or written once).
"""

import torch
import torch.nn.functional as F

from gpu_harness import kbm_gpu
from gpu_harness import ops_normalization as ops

SHAPES = [(16384, 4096), (65536, 1024)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _bytes(rows, cols, size, rms):
    """Minimal bytes of (forward, backward)."""
    n = rows * cols * size
    params = 1 if rms else 2
    stats = 1 if rms else 2
    fwd = 2 * n + params * cols * 4 + stats * rows * 4
    # dy, x read; dx written; gamma read; dgamma (dbeta) written; stats read.
    bwd = 3 * n + (1 + params) * cols * 4 + stats * rows * 4
    return fwd, bwd


def _kbm_fns(x, dy, gamma, beta, rms):
    rows, cols = x.shape
    code = kbm_gpu.DTYPE[x.dtype]
    p = kbm_gpu.ptr
    y = torch.empty_like(x)
    dx = torch.empty_like(x)
    mean = torch.empty(rows, device="cuda")
    rstd = torch.empty(rows, device="cuda")
    dgamma = torch.empty(cols, device="cuda")
    dbeta = torch.empty(cols, device="cuda")
    kind = "rms_norm" if rms else "layer_norm"
    nbytes = ops._fn(f"kbm_normalization_{kind}_bwd_workspace")(
        code, rows, cols
    )
    ws = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device="cuda")
    fwd_fn = ops._fn(f"kbm_normalization_{kind}_fwd")
    bwd_fn = ops._fn(f"kbm_normalization_{kind}_bwd")

    def fwd():
        s = kbm_gpu.stream()
        if rms:
            rc = fwd_fn(
                code, p(x), p(gamma), p(y), p(rstd), rows, cols, 1e-6, s
            )
        else:
            rc = fwd_fn(
                code,
                p(x),
                p(gamma),
                p(beta),
                p(y),
                p(mean),
                p(rstd),
                rows,
                cols,
                1e-3,
                s,
            )
        kbm_gpu.check(rc, f"{kind}_fwd")

    def bwd():
        s = kbm_gpu.stream()
        if rms:
            rc = bwd_fn(
                code,
                p(dy),
                p(x),
                p(gamma),
                p(rstd),
                p(dx),
                p(dgamma),
                rows,
                cols,
                p(ws),
                s,
            )
        else:
            rc = bwd_fn(
                code,
                p(dy),
                p(x),
                p(gamma),
                p(mean),
                p(rstd),
                p(dx),
                p(dgamma),
                p(dbeta),
                rows,
                cols,
                p(ws),
                s,
            )
        kbm_gpu.check(rc, f"{kind}_bwd")

    def pair():
        fwd()
        bwd()

    fwd()
    return fwd, bwd, pair


def _torch_fns(x, dy, rms):
    cols = x.shape[1]
    xr = x.detach().clone().requires_grad_(True)
    w = torch.ones(cols, dtype=x.dtype, device="cuda", requires_grad=True)
    b = torch.zeros(cols, dtype=x.dtype, device="cuda", requires_grad=True)

    def forward():
        if rms:
            return F.rms_norm(xr, (cols,), w, 1e-6)
        return F.layer_norm(xr, (cols,), w, b, 1e-3)

    params = (xr, w) if rms else (xr, w, b)

    def fwd():
        with torch.no_grad():
            forward()

    y = forward()

    def bwd():
        torch.autograd.grad(y, params, dy, retain_graph=True)

    def pair():
        torch.autograd.grad(forward(), params, dy)

    return fwd, bwd, pair


def run(results, quick=False):
    iters = 10 if quick else 20
    shapes = SHAPES[:1] if quick else SHAPES
    for rms in (False, True):
        op = "rms_norm" if rms else "layer_norm"
        impl = "F.rms_norm" if rms else "F.layer_norm"
        for rows, cols in shapes:
            for dname, dtype in DTYPES.items():
                g = torch.Generator(device="cuda").manual_seed(0)
                x = torch.randn(rows, cols, device="cuda", generator=g)
                x = x.to(dtype)
                dy = torch.randn(rows, cols, device="cuda", generator=g)
                dy = dy.to(dtype)
                gamma = torch.ones(cols, device="cuda")
                beta = torch.zeros(cols, device="cuda")
                kbm = _kbm_fns(x, dy, gamma, beta, rms)
                ref = _torch_fns(x, dy, rms)
                fwd_b, bwd_b = _bytes(rows, cols, x.element_size(), rms)
                for name, k, t, nbytes in zip(
                    ("fwd", "bwd", "fwd+bwd"),
                    kbm,
                    ref,
                    (fwd_b, bwd_b, fwd_b + bwd_b),
                ):
                    results.append(
                        {
                            "family": "normalization",
                            "op": f"{op} {name}",
                            "case": f"{rows}x{cols}",
                            "dtype": dname,
                            "shape": [rows, cols],
                            "kbm_ms": kbm_gpu.time_ms(k, iters=iters),
                            "torch_ms": kbm_gpu.time_ms(t, iters=iters),
                            "torch_impl": f"{impl} + autograd (eager)",
                            "bytes": nbytes,
                        }
                    )
                del x, dy, kbm, ref
                torch.cuda.empty_cache()
