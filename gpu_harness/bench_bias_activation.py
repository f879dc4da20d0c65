"""Times kbm's bias + GELU launchers against PyTorch eager.

PyTorch: F.gelu(x + bias, approximate=...) forward, autograd backward (dx,
dbias). kbm: the launchers with preallocated outputs and workspace. Cases:
forward, backward and the pair, exact and tanh GELU; "bytes" is the minimal
traffic (each tensor read or written once).
"""

import torch
import torch.nn.functional as F

from gpu_harness import kbm_gpu
from gpu_harness import ops_bias_activation as ops

SHAPES = [(16384, 4096), (65536, 1024)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _kbm_fns(x, dy, bias, approximate):
    rows, cols = x.shape
    code = kbm_gpu.DTYPE[x.dtype]
    p = kbm_gpu.ptr
    y = torch.empty_like(x)
    dx = torch.empty_like(x)
    dbias = torch.empty_like(bias)
    nbytes = ops._fn("kbm_bias_activation_bias_gelu_bwd_workspace")(
        code, rows, cols
    )
    ws = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device="cuda")
    fwd_fn = ops._fn("kbm_bias_activation_bias_gelu_fwd")
    bwd_fn = ops._fn("kbm_bias_activation_bias_gelu_bwd")
    a = int(approximate)

    def fwd():
        rc = fwd_fn(code, p(x), p(bias), p(y), rows, cols, a, kbm_gpu.stream())
        kbm_gpu.check(rc, "bias_gelu_fwd")

    def bwd():
        rc = bwd_fn(
            code,
            p(dy),
            p(x),
            p(bias),
            p(dx),
            p(dbias),
            rows,
            cols,
            a,
            p(ws),
            kbm_gpu.stream(),
        )
        kbm_gpu.check(rc, "bias_gelu_bwd")

    def pair():
        fwd()
        bwd()

    return fwd, bwd, pair


def _torch_fns(x, dy, bias, approximate):
    mode = "tanh" if approximate else "none"
    xr = x.detach().clone().requires_grad_(True)
    br = bias.detach().clone().requires_grad_(True)

    def forward():
        return F.gelu(xr + br, approximate=mode)

    def fwd():
        with torch.no_grad():
            forward()

    y = forward()

    def bwd():
        torch.autograd.grad(y, (xr, br), dy, retain_graph=True)

    def pair():
        torch.autograd.grad(forward(), (xr, br), dy)

    return fwd, bwd, pair


def run(results, quick=False):
    iters = 10 if quick else 20
    shapes = SHAPES[:1] if quick else SHAPES
    for approximate in (False, True):
        op = "bias_gelu_tanh" if approximate else "bias_gelu"
        for rows, cols in shapes:
            for dname, dtype in DTYPES.items():
                g = torch.Generator(device="cuda").manual_seed(0)
                x = torch.randn(rows, cols, device="cuda", generator=g)
                x = x.to(dtype)
                dy = torch.randn(rows, cols, device="cuda", generator=g)
                dy = dy.to(dtype)
                bias = torch.randn(cols, device="cuda", generator=g).to(dtype)
                kbm = _kbm_fns(x, dy, bias, approximate)
                ref = _torch_fns(x, dy, bias, approximate)
                n = rows * cols * x.element_size()
                c = cols * x.element_size()
                fwd_b, bwd_b = 2 * n + c, 3 * n + 2 * c
                for name, k, t, nbytes in zip(
                    ("fwd", "bwd", "fwd+bwd"),
                    kbm,
                    ref,
                    (fwd_b, bwd_b, fwd_b + bwd_b),
                ):
                    results.append(
                        {
                            "family": "bias_activation",
                            "op": f"{op} {name}",
                            "case": f"{rows}x{cols}",
                            "dtype": dname,
                            "shape": [rows, cols],
                            "kbm_ms": kbm_gpu.time_ms(k, iters=iters),
                            "torch_ms": kbm_gpu.time_ms(t, iters=iters),
                            "torch_impl": "x + bias, F.gelu + autograd",
                            "bytes": nbytes,
                        }
                    )
                del x, dy, kbm, ref
                torch.cuda.empty_cache()
